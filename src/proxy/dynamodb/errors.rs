//! Errors in the shape DynamoDB itself sends, so SDKs and the aws CLI report them as they
//! would report AWS's: HTTP 400 (or 413/500) with `{"__type": "<namespace>#<Name>", "message": …}`.

use bytes::Bytes;
use http::{Response, StatusCode};

/// Authentication errors come from AWS's front door, not from DynamoDB.
const CORAL: &str = "com.amazon.coral.service";
const DYNAMODB: &str = "com.amazonaws.dynamodb.v20120810";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    MissingAuthenticationToken,
    IncompleteSignature,
    InvalidSignature,
    UnrecognizedClient,
    AccessDenied,
    UnknownOperation,
    RequestTooLarge,
    Validation,
    InternalServerError,
    ServiceUnavailable,
}

impl ErrorKind {
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            ErrorKind::IncompleteSignature => "IncompleteSignatureException",
            ErrorKind::InvalidSignature => "InvalidSignatureException",
            ErrorKind::UnrecognizedClient => "UnrecognizedClientException",
            ErrorKind::AccessDenied => "AccessDeniedException",
            ErrorKind::UnknownOperation => "UnknownOperationException",
            ErrorKind::RequestTooLarge => "RequestEntityTooLarge",
            ErrorKind::Validation => "ValidationException",
            ErrorKind::InternalServerError => "InternalServerError",
            ErrorKind::ServiceUnavailable => "ServiceUnavailable",
        }
    }

    fn namespace(self) -> &'static str {
        match self {
            ErrorKind::MissingAuthenticationToken
            | ErrorKind::IncompleteSignature
            | ErrorKind::InvalidSignature
            | ErrorKind::UnrecognizedClient
            | ErrorKind::UnknownOperation
            | ErrorKind::RequestTooLarge => CORAL,
            _ => DYNAMODB,
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::InternalServerError => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// The error's body and headers. `message` is for the client: it names no secret.
pub fn error_response(kind: ErrorKind, message: &str) -> Response<Bytes> {
    let body = serde_json::json!({ "__type": format!("{}#{}", kind.namespace(), kind.name()), "message": message });
    let body = Bytes::from(body.to_string());
    let crc = crc32fast_ieee(&body);
    let mut response = Response::new(body);
    *response.status_mut() = kind.status();
    let headers = response.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-amz-json-1.0"));
    headers.insert(
        "x-amzn-requestid",
        http::HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).unwrap_or(http::HeaderValue::from_static("dbtape")),
    );
    // SDKs check this header on every DynamoDB response that has it; ours is right.
    if let Ok(value) = http::HeaderValue::from_str(&crc.to_string()) {
        headers.insert("x-amz-crc32", value);
    }
    response
}

/// CRC-32 (IEEE), as `x-amz-crc32` carries it; flate2 already has it.
fn crc32fast_ieee(bytes: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_look_like_aws() {
        let r = error_response(ErrorKind::UnrecognizedClient, "The security token included in the request is invalid.");
        assert_eq!(r.status(), 400);
        let body: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(body["__type"], "com.amazon.coral.service#UnrecognizedClientException");
        assert_eq!(r.headers()["x-amz-crc32"], crc32fast_ieee(r.body()).to_string().as_str());
        // A known CRC-32 value, so the table is IEEE's and not Castagnoli's.
        assert_eq!(crc32fast_ieee(b"123456789"), 0xCBF4_3926);
    }
}
