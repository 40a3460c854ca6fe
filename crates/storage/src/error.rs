/// Errors a store reports. Messages for sample-level refusals are Prometheus's own, since
/// remote-write clients and operators match on them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("out of order sample")]
    OutOfOrderSample,
    #[error("out of bounds")]
    OutOfBounds,
    #[error("too old sample")]
    TooOldSample,
    #[error("duplicate sample for timestamp")]
    DuplicateSampleForTimestamp,
    /// A sample further ahead of the store's clock than it accepts (after Mimir's creation
    /// grace period); the detail names the limit.
    #[error("sample timestamp too far in the future: {0}")]
    TooFarInFuture(String),
    /// A sample older than the store keeps; the detail names the limit.
    #[error("sample older than the retention: {0}")]
    OlderThanRetention(String),
    #[error("invalid labels: {0}")]
    InvalidLabels(String),
    #[error("query was canceled")]
    Canceled,
    #[error("query timed out")]
    DeadlineExceeded,
    #[error("{0}")]
    LimitExceeded(String),
    /// A bad request to the store, such as a select whose matchers all match the empty string.
    #[error("{0}")]
    BadRequest(String),
    /// A store could not be reached or failed; the query may still answer from others.
    #[error("{store}: {message}")]
    Unavailable { store: String, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("corruption: {0}")]
    Corruption(String),
    #[error("storage is closed")]
    Closed,
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether the error refuses one sample (the rest of a batch can go on).
    pub fn is_sample_error(&self) -> bool {
        matches!(
            self,
            Error::OutOfOrderSample
                | Error::OutOfBounds
                | Error::TooOldSample
                | Error::DuplicateSampleForTimestamp
                | Error::TooFarInFuture(_)
                | Error::OlderThanRetention(_)
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
