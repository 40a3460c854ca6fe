//! The crate's error type and its mapping into the storage seam's.

use m3query_chunkenc::ChunkError;

/// Errors from the TSDB's own machinery. Sample-level refusals are reported directly as
/// [`m3query_storage::Error`] values (Prometheus's messages), since callers match on them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the file.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file's contents do not decode.
    #[error("corruption in {file}: {message}")]
    Corruption {
        /// The file.
        file: String,
        /// What is wrong with it.
        message: String,
    },
    /// A chunk does not decode.
    #[error("chunk: {0}")]
    Chunk(#[from] ChunkError),
    /// [`Options`](crate::Options) that cannot work together; the text says why.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// Another process holds the directory's lock file.
    #[error("database directory {0} is locked by another process")]
    Locked(String),
    /// A block's `meta.json` does not parse.
    #[error("meta.json: {0}")]
    Meta(#[from] serde_json::Error),
    /// The database was closed.
    #[error("database is closed")]
    Closed,
    /// A storage-seam error (sample refusals, cancellation) passed through.
    #[error(transparent)]
    Storage(#[from] m3query_storage::Error),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn corruption(file: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Corruption {
            file: file.into(),
            message: message.into(),
        }
    }
}

/// A result with the TSDB's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for m3query_storage::Error {
    fn from(e: Error) -> Self {
        use m3query_storage::Error as S;
        match e {
            Error::Io { context, source } => S::Io { context, source },
            Error::Corruption { file, message } => S::Corruption(format!("{file}: {message}")),
            Error::Chunk(c) => S::Corruption(c.to_string()),
            Error::Closed => S::Closed,
            Error::Storage(s) => s,
            other => S::Other(Box::new(other)),
        }
    }
}

/// Adds a path to I/O errors.
pub(crate) trait IoContext<T> {
    fn ctx(self, what: &str, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: &str, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| Error::io(format!("{what} {}", path.display()), e))
    }
}
