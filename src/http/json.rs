//! A JSON body extractor whose rejections are the service's JSON errors (axum's own answer
//! in plain text): bad syntax 400, wrong shape 422, wrong content type 415, too large 413.

use crate::error::{ApiError, ErrorKind};
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(rejected(&rejection)),
        }
    }
}

fn rejected(rejection: &JsonRejection) -> ApiError {
    let kind = match rejection.status() {
        StatusCode::UNPROCESSABLE_ENTITY => ErrorKind::InvalidRequest,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorKind::UnsupportedMediaType,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorKind::PayloadTooLarge,
        _ => ErrorKind::InvalidJson,
    };
    let message = match kind {
        ErrorKind::UnsupportedMediaType => {
            "send the body as JSON with the header `content-type: application/json`".to_string()
        }
        ErrorKind::PayloadTooLarge => {
            "the request body is larger than the server's limit".to_string()
        }
        _ => rejection.body_text(),
    };
    ApiError::new(kind, message)
}
