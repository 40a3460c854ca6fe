//! One storage error, one answer: the same store failure gets the same status and `errorType`
//! through the query routes (which reach the store through the PromQL engine) and the
//! metadata routes (which call the store directly).

use std::sync::Arc;

use axum::body::Body;
use http::Request;
use http_body_util::BodyExt;
use m3query_model::Matcher;
use m3query_server::{BuildInfo, Config, MetricsRegistry, Server, Services};
use m3query_storage::{
    Context, Error, LabelHints, LabelValues, Querier, Queryable, Result, SelectHints, SeriesSet,
};
use m3query_telemetry::Propagation;
use tower::ServiceExt;

/// Where the fake store fails: opening a querier, or each lookup on one.
#[derive(Clone, Copy, Debug)]
enum FailAt {
    Querier,
    Lookup,
}

/// A store that fails every read with the error `make` builds.
struct Failing {
    at: FailAt,
    make: fn() -> Error,
}

impl Queryable for Failing {
    fn querier(&self, _mint: i64, _maxt: i64) -> Result<Box<dyn Querier + '_>> {
        match self.at {
            FailAt::Querier => Err((self.make)()),
            FailAt::Lookup => Ok(Box::new(FailingQuerier(self.make))),
        }
    }
}

struct FailingQuerier(fn() -> Error);

impl Querier for FailingQuerier {
    fn select(
        &self,
        _ctx: &Context,
        _sort: bool,
        _hints: &SelectHints,
        _matchers: &[Matcher],
    ) -> Result<Box<dyn SeriesSet + '_>> {
        Err((self.0)())
    }

    fn label_values(
        &self,
        _ctx: &Context,
        _name: &str,
        _hints: &LabelHints,
        _matchers: &[Matcher],
    ) -> Result<LabelValues> {
        Err((self.0)())
    }

    fn label_names(
        &self,
        _ctx: &Context,
        _hints: &LabelHints,
        _matchers: &[Matcher],
    ) -> Result<LabelValues> {
        Err((self.0)())
    }
}

fn server(store: Failing) -> Server {
    let server = Server::new(
        Config::default(),
        BuildInfo::default(),
        MetricsRegistry::new(&BuildInfo::default()),
        Propagation::default(),
    );
    server.set_services(Services {
        queryable: Arc::new(store),
        appendable: None,
        collector: None,
        tsdb: None,
    });
    server
}

const ROUTES: [&str; 7] = [
    "/api/v1/query?query=up&time=100",
    "/api/v1/query?query=sum(rate(up%5B5m%5D))&time=100",
    "/api/v1/query_range?query=up&start=0&end=60&step=15",
    "/api/v1/series?match%5B%5D=up",
    "/api/v1/labels",
    "/api/v1/labels?match%5B%5D=up",
    "/api/v1/label/x/values",
];

async fn answer(server: &Server, uri: &str) -> (u16, serde_json::Value) {
    let req = Request::get(uri).body(Body::empty()).expect("request");
    let resp = server.router().oneshot(req).await.expect("infallible");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let v = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{uri}: {e}: {body:?}"));
    (status, v)
}

/// A storage error, and the status, `errorType` and message part it must answer with.
type Case = (fn() -> Error, u16, &'static str, &'static str);

#[tokio::test]
async fn a_storage_error_answers_alike_on_every_route() {
    // Each error with the status and kind the error table gives it (see `storage_kind`).
    let cases: [Case; 7] = [
        (
            || Error::BadRequest("the store refuses this selector".into()),
            422,
            "execution",
            "the store refuses this selector",
        ),
        (
            || Error::LimitExceeded("the store's series limit".into()),
            422,
            "execution",
            "the store's series limit",
        ),
        (
            || Error::Unavailable {
                store: "far".into(),
                message: "connection refused".into(),
            },
            503,
            "unavailable",
            "far: connection refused",
        ),
        (|| Error::Closed, 503, "unavailable", "storage is closed"),
        (
            || Error::io("reading block 01ABC", std::io::Error::other("EIO")),
            500,
            "internal",
            "reading block 01ABC: EIO",
        ),
        (
            || Error::Corruption("bad chunk".into()),
            500,
            "internal",
            "corruption: bad chunk",
        ),
        (|| Error::DeadlineExceeded, 503, "timeout", "timed out"),
    ];
    for at in [FailAt::Querier, FailAt::Lookup] {
        for (make, status, kind, message) in cases {
            let s = server(Failing { at, make });
            for uri in ROUTES {
                let (got, v) = answer(&s, uri).await;
                let what = format!("{at:?} {uri}: {v}");
                assert_eq!(got, status, "{what}");
                assert_eq!(v["status"], "error", "{what}");
                assert_eq!(v["errorType"], kind, "{what}");
                let text = v["error"].as_str().unwrap_or_default();
                assert!(text.contains(message), "{what}");
            }
        }
    }
}
