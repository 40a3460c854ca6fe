//! Request parameters as Prometheus reads them: the URL query string merged with a POSTed
//! `application/x-www-form-urlencoded` body (body values first), repeated keys kept
//! (`match[]`), times as RFC3339 or unix seconds, durations as Prometheus durations or seconds.

use axum::extract::{FromRequest, Request};
use bytes::Bytes;
use http::{Method, StatusCode, header};
use m3query_model::time::{MAX_TIME_MS, MIN_TIME_MS, parse_api_duration, parse_api_time};

use crate::error::ApiError;

/// All parameters of a request, in order.
#[derive(Debug, Default, Clone)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
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

fn parse_into(out: &mut Vec<(String, String)>, raw: &[u8]) {
    out.extend(form_urlencoded::parse(raw).map(|(k, v)| (k.into_owned(), v.into_owned())));
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

impl<S: Send + Sync> FromRequest<S> for Params {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let mut pairs = Vec::new();
        let query = req.uri().query().map(|q| q.as_bytes().to_vec());
        if req.method() == Method::POST && is_form(&req) {
            let body = Bytes::from_request(req, state).await.map_err(|e| {
                let status = e.status();
                let err = ApiError::bad_data(format!("cannot read request body: {e}"));
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    err.with_status(status)
                } else {
                    err
                }
            })?;
            parse_into(&mut pairs, &body);
        }
        if let Some(q) = query {
            parse_into(&mut pairs, &q);
        }
        Ok(Params { pairs })
    }
}
