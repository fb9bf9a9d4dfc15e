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
    /// A stream's endpoint stopped answering (the member is stopped or cut
    /// off) although its connection is still open.
    #[error("registry endpoint {endpoint} silent for {silent:?} (stopped or cut off)")]
    Stalled { endpoint: String, silent: std::time::Duration },
    /// A write that is not safe to repeat (a transaction that writes) was
    /// sent, and no answer came: its member stopped answering or its
    /// connection broke after the request left. It may or may not have been
    /// applied, so it was not sent to another endpoint; read back to know.
    #[error(
        "{op} on {endpoint}: outcome unknown ({reason}); it may or may not have been applied, so it was not sent again"
    )]
    OutcomeUnknown { op: &'static str, endpoint: String, reason: String },
    /// An endpoint or option was malformed.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An instance description was malformed.
    #[error("invalid instance: {0}")]
    Instance(String),
    /// A lock is no longer held: its session lease expired or was revoked,
    /// or its key was deleted. Writes fenced by it are refused.
    #[error("lock {key} is no longer held (its session ended or its key was deleted)")]
    LockLost { key: String },
    /// The session's lease expired or was revoked.
    #[error("session lease {lease:x} is gone (expired or revoked)")]
    SessionLost { lease: i64 },
    /// An election call by a candidate that is not (or no longer) leader.
    #[error("election: not leader")]
    NotLeader,
    /// Nobody has campaigned in the election.
    #[error("election: no leader")]
    NoLeader,
    /// The handle was closed.
    #[error("closed")]
    Closed,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
