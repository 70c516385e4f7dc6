//! Why a response request was refused, in the response domain's own terms. The
//! gRPC service (`api/`) maps each kind to a `tonic::Status` code and the web UI to
//! an HTTP status; the message is the operator-facing text either way.

/// A refused or failed response request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// The request itself is wrong (unknown verb, missing reason, bad target).
    #[error("{0}")]
    Invalid(String),
    /// The target (process, chain, agent, credential, action) is not known.
    #[error("{0}")]
    NotFound(String),
    /// The same action was issued moments ago or is still in force: `action_id`.
    #[error("{message}")]
    Duplicate { action_id: String, message: String },
    /// The target exists but the action cannot apply to it now (exited process,
    /// no enrolled host, an action that cannot be released).
    #[error("{0}")]
    NotApplicable(String),
    /// Recording the action or its audit entry failed.
    #[error("{0}")]
    Storage(String),
}

impl ResponseError {
    pub fn invalid(msg: impl Into<String>) -> ResponseError {
        ResponseError::Invalid(msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> ResponseError {
        ResponseError::NotFound(msg.into())
    }
    pub fn not_applicable(msg: impl Into<String>) -> ResponseError {
        ResponseError::NotApplicable(msg.into())
    }
    pub fn storage(msg: impl Into<String>) -> ResponseError {
        ResponseError::Storage(msg.into())
    }
}
