//! Request parameters as Prometheus reads them: the URL query string merged with a POSTed
//! `application/x-www-form-urlencoded` body (body values first), repeated keys kept
//! (`match[]`), times as RFC3339 or unix seconds, durations as Prometheus durations or seconds.

use axum::extract::{FromRequest, Request};
use http::{Method, header};
use m3query_model::time::{MAX_TIME_MS, MIN_TIME_MS, parse_api_duration, parse_api_time};

use crate::error::ApiError;

/// All parameters of a request, in order.
#[derive(Debug, Default, Clone)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Parameters from decoded pairs, in order (repeated keys kept).
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        Params { pairs }
    }

    /// The first value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A time parameter, or `default` when absent.
    pub fn time(&self, key: &str, default: i64) -> Result<i64, ApiError> {
        match self.get(key) {
            None | Some("") => Ok(default),
            Some(v) => parse_api_time(v)
                .map_err(|e| ApiError::bad_data(format!("invalid parameter {key:?}: {e}"))),
        }
    }

    /// A required time parameter.
    pub fn required_time(&self, key: &str) -> Result<i64, ApiError> {
        match self.get(key) {
            None | Some("") => Err(ApiError::bad_data(format!(
                "invalid parameter {key:?}: cannot parse \"\" to a valid timestamp"
            ))),
            Some(v) => parse_api_time(v)
                .map_err(|e| ApiError::bad_data(format!("invalid parameter {key:?}: {e}"))),
        }
    }

    /// A duration parameter in milliseconds, if present.
    pub fn duration(&self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => parse_api_duration(v)
                .map(Some)
                .map_err(|e| ApiError::bad_data(format!("invalid parameter {key:?}: {e}"))),
        }
    }

    /// A non-negative integer limit (0 or absent: no limit).
    pub fn limit(&self, key: &str) -> Result<usize, ApiError> {
        match self.get(key) {
            None | Some("") => Ok(0),
            Some(v) => v.parse::<i64>().ok().filter(|n| *n >= 0).map_or_else(
                || {
                    Err(ApiError::bad_data(format!(
                        "invalid parameter {key:?}: {v:?} is not a non-negative integer"
                    )))
                },
                |n| Ok(usize::try_from(n).unwrap_or(usize::MAX)),
            ),
        }
    }

    /// `start`/`end` of metadata endpoints, defaulting to all time.
    pub fn time_range(&self) -> Result<(i64, i64), ApiError> {
        let start = self.time("start", MIN_TIME_MS)?;
        let end = self.time("end", MAX_TIME_MS)?;
        if end < start {
            return Err(ApiError::bad_data(
                "invalid parameter \"end\": end timestamp must not be before start time",
            ));
        }
        Ok((start, end))
    }
}

/// Decodes `application/x-www-form-urlencoded` pairs strictly, as Go's `url.ParseQuery`
/// does for Prometheus: an invalid escape (`%zz`) or bytes that are not UTF-8 (`%ff`) are a 400,
/// not silently replaced by U+FFFD (which would run a different query than the one sent).
fn parse_into(out: &mut Vec<(String, String)>, raw: &[u8]) -> Result<(), ApiError> {
    for pair in raw.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let (k, v) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        let key = unescape(k)?;
        let value = unescape(v)
            .map_err(|e| ApiError::bad_data(format!("invalid parameter {key:?}: {}", e.message)))?;
        out.push((key, value));
    }
    Ok(())
}

/// Percent- and `+`-decoding of one key or value.
fn unescape(raw: &[u8]) -> Result<String, ApiError> {
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        match b {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hex = |j: usize| raw.get(j).and_then(|c| (*c as char).to_digit(16));
                match (hex(i + 1), hex(i + 2)) {
                    (Some(h), Some(l)) => bytes.push((h * 16 + l) as u8),
                    _ => {
                        let end = (i + 3).min(raw.len());
                        return Err(ApiError::bad_data(format!(
                            "invalid URL escape {:?}",
                            String::from_utf8_lossy(&raw[i..end])
                        )));
                    }
                }
                i += 2;
            }
            _ => bytes.push(b),
        }
        i += 1;
    }
    String::from_utf8(bytes).map_err(|e| {
        ApiError::bad_data(format!(
            "invalid UTF-8 in the URL or form after decoding escapes (byte {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

fn is_form(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.split(';').next().is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        })
}

/// The form body limit when no [`crate::body::enforce`] layer set one (in-process tests).
const DEFAULT_FORM_BODY_LIMIT: usize = 32 << 20;

impl<S: Send + Sync> FromRequest<S> for Params {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let mut pairs = Vec::new();
        let query = req.uri().query().map(|q| q.as_bytes().to_vec());
        if req.method() == Method::POST && is_form(&req) {
            let limit = req
                .extensions()
                .get::<crate::body::BodyLimits>()
                .map_or(DEFAULT_FORM_BODY_LIMIT, |l| {
                    usize::try_from(l.max_bytes).unwrap_or(usize::MAX)
                });
            let body = crate::body::read_body(req.into_body(), limit).await?;
            parse_into(&mut pairs, &body)?;
        }
        if let Some(q) = query {
            parse_into(&mut pairs, &q)?;
        }
        Ok(Params { pairs })
    }
}
