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
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    /// etcdctl's `auth enable` matches this text to create the root role
    /// and grant it, then retries.
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    /// Removing root, or root's role from root, while auth is on.
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    /// The token was issued before the latest auth change; clients
    /// authenticate again and retry.
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: server stopped")]
    Stopped,
    /// The store is over `--quota-backend-bytes`, or the NOSPACE alarm is
    /// raised: writes that add data are refused until it is disarmed.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// An error etcd returns without a gRPC code of its own, so clients see
    /// code Unknown and this text as is (for example "auth: permission
    /// denied" from the maintenance layer).
    #[error("{0}")]
    Plain(String),
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
    PermissionDenied,
    Unauthenticated,
    Unknown,
}

impl EtcdError {
    pub fn code(&self) -> ErrorCode {
        use EtcdError::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey | RequestTooLarge
            | UserEmpty | RoleEmpty | AuthFailed | InvalidAuthMgmt | AuthOldRevision => ErrorCode::InvalidArgument,
            Compacted | FutureRev | LeaseTtlTooLarge => ErrorCode::OutOfRange,
            LeaseNotFound => ErrorCode::NotFound,
            LeaseExists | AuthNotEnabled | RootUserNotExist | RootRoleNotExist | UserAlreadyExist | UserNotFound
            | RoleAlreadyExist | RoleNotFound | RoleNotGranted | PermissionNotGranted => ErrorCode::FailedPrecondition,
            PermissionDenied => ErrorCode::PermissionDenied,
            InvalidAuthToken => ErrorCode::Unauthenticated,
            Timeout | Stopped => ErrorCode::Unavailable,
            NoSpace => ErrorCode::ResourceExhausted,
            Internal(_) => ErrorCode::Internal,
            Plain(_) => ErrorCode::Unknown,
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
            ErrorCode::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorCode::Unknown => tonic::Code::Unknown,
        };
        tonic::Status::new(code, e.to_string())
    }
}
