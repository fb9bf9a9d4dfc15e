/// Errors from the Roster SDK.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The registry answered with an error (etcd's message is kept verbatim).
    #[error("registry error: {0}")]
    Status(#[from] tonic::Status),
    /// No endpoint could be reached.
    #[error("cannot reach any registry endpoint ({endpoints}): {reason}")]
    Unreachable { endpoints: String, reason: String },
    /// A call took longer than the configured request timeout.
    #[error("registry call timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// An endpoint or option was malformed.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An instance description was malformed.
    #[error("invalid instance: {0}")]
    Instance(String),
    /// The handle was closed.
    #[error("closed")]
    Closed,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
