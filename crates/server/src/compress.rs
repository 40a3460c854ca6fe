//! Gzip for responses, as Prometheus's `CompressionHandler` does for its API and UI: Grafana
//! (any Go client) asks for it, and a range query's JSON shrinks about fourfold at the
//! fastest level, which matters once a dashboard is across a network.
//!
//! Only bodies already in memory (an exact size) are compressed: the JSON answers, pages and
//! metrics text. Streams (remote read's frames) and anything already encoded (snappy) pass
//! through. Large bodies are compressed on a request worker, not on the runtime's threads.

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, header};
use http_body::Body as _;
use http_body_util::BodyExt;

use crate::error::ApiError;

/// Below this a body goes as it is: a packet or two either way.
const MIN_BYTES: u64 = 1024;

/// Up to this, compressing takes well under a millisecond: done in place rather than paying
/// for a hand-over to a worker thread.
const INLINE_BYTES: u64 = 64 * 1024;

/// The middleware.
pub(crate) async fn gzip(req: Request, next: Next) -> Response {
    let accepts = accepts_gzip(req.headers());
    let resp = next.run(req).await;
    if !accepts {
        return resp;
    }
    let size = match resp.body().size_hint().exact() {
        Some(n) if n >= MIN_BYTES && compressible(resp.headers()) => n,
        _ => return resp,
    };
    let (mut parts, body) = resp.into_parts();
    // In memory already: collecting waits for nothing.
    let bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        // Bodies with an exact size are buffered answers, which do not fail; were one to,
        // the client gets an error, not half an answer.
        Err(e) => return ApiError::internal(format!("reading a response: {e}")).into_response(),
    };
    let compressed = if size <= INLINE_BYTES {
        encode(&bytes)
    } else {
        match crate::workers::run(move || encode(&bytes)).await {
            Ok(c) => c,
            Err(e) => return ApiError::from(e).into_response(),
        }
    };
    let compressed = match compressed {
        Ok(c) => c,
        // Into memory this does not fail; were it to, no half-written gzip goes out.
        Err(e) => {
            return ApiError::internal(format!("compressing a response: {e}")).into_response();
        }
    };
    parts
        .headers
        .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .append(header::VARY, HeaderValue::from_static("accept-encoding"));
    Response::from_parts(parts, Body::from(compressed))
}

fn encode(data: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    enc.write_all(data)?;
    enc.finish()
}

/// Whether `Accept-Encoding` lists gzip (or `*`) with a weight above 0.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            if !(coding.eq_ignore_ascii_case("gzip") || coding == "*") {
                return false;
            }
            // `q=0` refuses the coding; anything else (or no weight) accepts it.
            !parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            })
        })
}

/// Text worth compressing, not already encoded.
fn compressible(headers: &HeaderMap) -> bool {
    if headers.contains_key(header::CONTENT_ENCODING) {
        return false;
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    ct.starts_with("application/json")
        || ct.starts_with("text/")
        || ct.starts_with("application/javascript")
        || ct.starts_with("application/openmetrics-text")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(v).expect("value"),
        );
        m
    }

    #[test]
    fn accept_encoding_weights() {
        assert!(accepts_gzip(&h("gzip")));
        assert!(accepts_gzip(&h("deflate, gzip;q=0.5")));
        assert!(accepts_gzip(&h("GZIP")));
        assert!(accepts_gzip(&h("*")));
        assert!(!accepts_gzip(&h("gzip;q=0")));
        assert!(!accepts_gzip(&h("gzip; q=0.0, identity")));
        assert!(!accepts_gzip(&h("snappy")));
        assert!(!accepts_gzip(&h("x-gzip-like")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn only_unencoded_text_is_compressed() {
        let ct = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_str(v).expect("value"),
            );
            m
        };
        assert!(compressible(&ct("application/json")));
        assert!(compressible(&ct("text/plain; version=0.0.4")));
        assert!(!compressible(&ct("application/x-protobuf")));
        let mut snappy = ct("application/json");
        snappy.insert(header::CONTENT_ENCODING, HeaderValue::from_static("snappy"));
        assert!(!compressible(&snappy));
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read;
        let data =
            br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#.repeat(100);
        let gz = encode(&data).expect("gzip");
        assert!(gz.len() < data.len() / 10, "{} bytes", gz.len());
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .expect("decode");
        assert_eq!(out, data);
    }
}
