//! Request bodies: read whole within a size limit and a deadline (a client trickling a
//! body cannot hold a request open past `--body-timeout`), and JSON bodies whose
//! rejections are the service's JSON errors (axum's own are plain text): bad syntax 400,
//! wrong shape 422, wrong content type 415, too large 413, too slow 408.

use super::AppState;
use crate::error::{ApiError, ErrorKind};
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use std::time::Duration;

pub struct ApiJson<T>(pub T);

impl<T> FromRequest<AppState> for ApiJson<T>
where
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = read_json_body(req, state.body_limit, state.body_timeout).await?;
        parse(&bytes).map(ApiJson)
    }
}

/// Parses a JSON body: bad syntax is 400, the wrong shape 422.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = T::deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    value.map_err(|err| {
        let kind = match err.classify() {
            serde_json::error::Category::Data => ErrorKind::InvalidRequest,
            _ => ErrorKind::InvalidJson,
        };
        let what = match kind {
            ErrorKind::InvalidRequest => "the JSON body does not have the expected shape",
            _ => "the body is not valid JSON",
        };
        ApiError::new(kind, format!("{what}: {err}"))
    })
}

/// Reads a JSON request's whole body: at most `limit` bytes, within `timeout`.
pub async fn read_json_body(
    req: Request,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| {
            v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
        });
    if !json {
        return Err(ApiError::new(
            ErrorKind::UnsupportedMediaType,
            "send the body as JSON with the header `content-type: application/json`",
        ));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    // Frames are copied into one buffer as they arrive (sized by Content-Length), so a large
    // body is never held twice.
    let mut body = req.into_body();
    let mut bytes = Vec::with_capacity(declared.map_or(0, |n| n as usize).min(limit));
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|err| {
                ApiError::new(
                    ErrorKind::InvalidRequest,
                    format!("the request body could not be read: {err}"),
                )
            })?;
            if let Ok(data) = frame.into_data() {
                if bytes.len() + data.len() > limit {
                    return Err(too_large(limit));
                }
                bytes.extend_from_slice(&data);
            }
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, read).await {
        Err(_) => Err(ApiError::new(
            ErrorKind::RequestTimeout,
            format!(
                "the request body did not arrive within {} s",
                timeout.as_secs_f64()
            ),
        )),
        Ok(result) => result.map(|()| Bytes::from(bytes)),
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorKind::PayloadTooLarge,
        format!("the request body is larger than the server's limit ({limit} bytes)"),
    )
}
