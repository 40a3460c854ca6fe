/// Errors a store reports. Messages for sample-level refusals are Prometheus's own, since
/// remote-write clients and operators match on them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A sample older than the series' newest, outside the out-of-order window.
    #[error("out of order sample")]
    OutOfOrderSample,
    /// A sample outside the time range the store still accepts writes for.
    #[error("out of bounds")]
    OutOfBounds,
    /// A sample too old for the out-of-order window.
    #[error("too old sample")]
    TooOldSample,
    /// A sample at a timestamp the series already has, with another value.
    #[error("duplicate sample for timestamp")]
    DuplicateSampleForTimestamp,
    /// A sample further ahead of the store's clock than it accepts (after Mimir's creation
    /// grace period); the detail names the limit.
    #[error("sample timestamp too far in the future: {0}")]
    TooFarInFuture(String),
    /// A sample older than the store keeps; the detail names the limit.
    #[error("sample older than the retention: {0}")]
    OlderThanRetention(String),
    /// One sample the store refuses as invalid (a native histogram whose counts, spans
    /// and buckets disagree); the detail says why. The rest of a batch can go on.
    #[error("invalid sample: {0}")]
    InvalidSample(String),
    /// A label set the store cannot hold (empty, or invalid names or values).
    #[error("invalid labels: {0}")]
    InvalidLabels(String),
    /// The query's context was canceled (the client went away).
    #[error("query was canceled")]
    Canceled,
    /// The query's deadline passed.
    #[error("query timed out")]
    DeadlineExceeded,
    /// A read limit (samples, series, bytes) was hit; the message names it.
    #[error("{0}")]
    LimitExceeded(String),
    /// A bad request to the store, such as a select whose matchers all match the empty string.
    #[error("{0}")]
    BadRequest(String),
    /// A store could not be reached or failed; the query may still answer from others.
    #[error("{store}: {message}")]
    Unavailable {
        /// The store's configured name.
        store: String,
        /// What failed, with URL credentials masked.
        message: String,
    },
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done (`reading block 01ABC`).
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Stored data does not decode; the message says where.
    #[error("corruption: {0}")]
    Corruption(String),
    /// The store was closed (shutting down).
    #[error("storage is closed")]
    Closed,
    /// Any other failure, kept as its source error.
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
                | Error::InvalidSample(_)
        )
    }
}

/// A result with the storage [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
