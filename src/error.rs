//! The error an HTTP caller sees: a kind that knows its status code, and a JSON body
//! `{"error": {"code": ..., "message": ...}}`. Every failure is mapped to one here.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Seconds a client is asked to wait before retrying after a 429 or 503.
const RETRY_AFTER_SECS: u64 = 1;

/// What went wrong, as the `code` of the error body (the HTTP status follows from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The body is not valid JSON.
    InvalidJson,
    /// Valid JSON, but not a valid request (missing or empty text, bad field types).
    InvalidRequest,
    UnsupportedMediaType,
    PayloadTooLarge,
    /// The body did not arrive in time.
    RequestTimeout,
    NotFound,
    MethodNotAllowed,
    /// Too many requests are waiting for the model.
    Overloaded,
    /// Still loading the model and index.
    NotReady,
    /// `model` names no route, backend or `auto`.
    ModelNotFound,
    /// No backend may receive the request's data class.
    DataClassRefused,
    /// Every backend failed.
    UpstreamFailed,
    /// Every backend is cooling down.
    UpstreamUnavailable,
    /// No key, or a key semroute does not know, where one is required.
    Unauthorized,
    /// The key may not use this route, backend or data class.
    Forbidden,
    /// Over a rate limit (requests or tokens per minute).
    RateLimitExceeded,
    /// Over a budget in USD.
    BudgetExceeded,
    /// No target's context window holds the request.
    ContextLengthExceeded,
    /// The shared state (Redis) cannot be reached and `state.on_error` is `fail_closed`.
    StateUnavailable,
    /// A reload found the config file invalid (the old config keeps serving).
    InvalidConfig,
    /// A reload failed for another reason (the old config keeps serving).
    ReloadFailed,
    /// Feedback for a request that already has it.
    FeedbackRepeated,
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidJson => StatusCode::BAD_REQUEST,
            ErrorKind::InvalidRequest => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::ModelNotFound => StatusCode::NOT_FOUND,
            ErrorKind::DataClassRefused => StatusCode::FORBIDDEN,
            ErrorKind::UpstreamFailed => StatusCode::BAD_GATEWAY,
            ErrorKind::UpstreamUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::RateLimitExceeded | ErrorKind::BudgetExceeded => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ErrorKind::ContextLengthExceeded => StatusCode::BAD_REQUEST,
            ErrorKind::StateUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::InvalidConfig => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::ReloadFailed => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::FeedbackRepeated => StatusCode::CONFLICT,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A failure as the caller sees it: `code` says what kind, `message` says what to do.
#[derive(Debug, Clone, thiserror::Error, Serialize, utoipa::ToSchema)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorKind,
    pub message: String,
    /// Seconds for the `Retry-After` header (429 and 503 get one; default 1).
    #[serde(skip)]
    pub retry_after: Option<u64>,
    /// Headers the answer carries besides (`x-ratelimit-*`).
    #[serde(skip)]
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(code: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            retry_after: None,
            headers: Vec::new(),
        }
    }

    pub fn with_headers(mut self, headers: Vec<(&'static str, String)>) -> ApiError {
        self.headers = headers;
        self
    }

    pub fn with_retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::InvalidRequest, message)
    }
}

impl From<crate::embed::WorkerError> for ApiError {
    fn from(err: crate::embed::WorkerError) -> Self {
        use crate::embed::WorkerError;
        let kind = match err {
            WorkerError::Overloaded(_) => ErrorKind::Overloaded,
            WorkerError::Stopped | WorkerError::Embed(_) => ErrorKind::Internal,
        };
        ApiError::new(kind, err.to_string())
    }
}

/// The body of every error answer: `{"error": {"code": ..., "message": ...}}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    pub error: &'a ApiError,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.code == ErrorKind::Internal {
            tracing::error!(message = %self.message, "request failed");
        }
        let status = self.code.status();
        let mut response = (status, axum::Json(ErrorBody { error: &self })).into_response();
        let headers = response.headers_mut();
        for (name, value) in &self.headers {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(*name, value);
            }
        }
        if self.code == ErrorKind::Unauthorized {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if matches!(
            self.code,
            ErrorKind::Overloaded
                | ErrorKind::NotReady
                | ErrorKind::UpstreamUnavailable
                | ErrorKind::RateLimitExceeded
                | ErrorKind::BudgetExceeded
                | ErrorKind::StateUnavailable
        ) {
            let seconds = self.retry_after.unwrap_or(RETRY_AFTER_SECS);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
