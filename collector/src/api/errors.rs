//! Domain errors to gRPC statuses, in one place: the domain modules return their
//! own error types and only the API edge knows tonic's codes.

use tonic::Status;

use crate::response::ResponseError;

impl From<ResponseError> for Status {
    fn from(e: ResponseError) -> Status {
        let msg = e.to_string();
        match e {
            ResponseError::Invalid(_) => Status::invalid_argument(msg),
            ResponseError::NotFound(_) => Status::not_found(msg),
            ResponseError::Duplicate { .. } => Status::already_exists(msg),
            ResponseError::NotApplicable(_) => Status::failed_precondition(msg),
            ResponseError::Storage(_) => Status::internal(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn each_kind_has_its_code_and_keeps_its_message() {
        for (e, code) in [
            (ResponseError::invalid("bad verb"), Code::InvalidArgument),
            (ResponseError::not_found("no such chain"), Code::NotFound),
            (
                ResponseError::Duplicate {
                    action_id: "act-1".into(),
                    message: "identical to action act-1".into(),
                },
                Code::AlreadyExists,
            ),
            (
                ResponseError::not_applicable("process exited"),
                Code::FailedPrecondition,
            ),
            (
                ResponseError::storage("audit log: disk full"),
                Code::Internal,
            ),
        ] {
            let msg = e.to_string();
            let s = Status::from(e);
            assert_eq!(s.code(), code, "{msg}");
            assert_eq!(s.message(), msg);
        }
    }
}
