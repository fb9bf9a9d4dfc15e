/// An error etcd reports to clients, with etcd's exact text.
///
/// etcd clients (and users' code) recognise errors by their message, so the
/// `Display` of each variant is a wire fact and must match etcd letter for
/// letter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: server stopped")]
    Stopped,
    /// The store is over `--quota-backend-bytes`, or the NOSPACE alarm is
    /// raised: writes that add data are refused until it is disarmed.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// The store could not make a write durable; the write was not applied.
    #[error("etcdserver: {0}")]
    Internal(String),
}

/// The gRPC status code etcd pairs with each error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    OutOfRange,
    NotFound,
    FailedPrecondition,
    Unavailable,
    ResourceExhausted,
    Internal,
}

impl EtcdError {
    pub fn code(&self) -> ErrorCode {
        use EtcdError::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | RequestTooLarge => ErrorCode::InvalidArgument,
            Compacted | FutureRev | LeaseTtlTooLarge => ErrorCode::OutOfRange,
            LeaseNotFound => ErrorCode::NotFound,
            LeaseExists | AuthNotEnabled => ErrorCode::FailedPrecondition,
            Timeout | Stopped => ErrorCode::Unavailable,
            NoSpace => ErrorCode::ResourceExhausted,
            Internal(_) => ErrorCode::Internal,
        }
    }
}

#[cfg(feature = "grpc")]
impl From<EtcdError> for tonic::Status {
    fn from(e: EtcdError) -> Self {
        let code = match e.code() {
            ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorCode::OutOfRange => tonic::Code::OutOfRange,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::FailedPrecondition => tonic::Code::FailedPrecondition,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::ResourceExhausted => tonic::Code::ResourceExhausted,
            ErrorCode::Internal => tonic::Code::Internal,
        };
        tonic::Status::new(code, e.to_string())
    }
}
