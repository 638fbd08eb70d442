//! What to do after one attempt on a backend: the retry and fallback rules, as a pure
//! function of what the attempt returned, so each rule is unit-tested without a network.

use crate::config::Backend;
use std::time::{Duration, SystemTime};

/// How an attempt ended, when it did not produce an answer to relay.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Refused, reset or failed before any response byte.
    Connect(String),
    /// No response headers (or, on a stream, no first event) within the first-byte timeout.
    Silent,
    /// An HTTP error status with the body it came with.
    Status {
        status: u16,
        retry_after: Option<Duration>,
        body: Vec<u8>,
    },
    /// An error event (`data: {"error": ...}`) in place of the answer.
    InBand {
        code: Option<String>,
        message: String,
    },
    /// A 2xx whose body is not a chat completion (an HTML page, a stream without events).
    Invalid(String),
}

impl Outcome {
    /// A short description for logs and the combined error (never the body).
    pub fn describe(&self) -> String {
        match self {
            Outcome::Connect(reason) => format!("connection failed: {reason}"),
            Outcome::Silent => "no response within first_byte_timeout_ms".into(),
            Outcome::Status {
                status: 401 | 403, ..
            } => "its credential was refused (HTTP 401/403)".into(),
            Outcome::Status { status, .. } => format!("HTTP {status}"),
            Outcome::InBand { code, message } => {
                let short: String = message.chars().take(200).collect();
                match code {
                    Some(code) => format!("an error event in the stream ({code}): {short}"),
                    None => format!("an error event in the stream: {short}"),
                }
            }
            Outcome::Invalid(reason) => format!("not a chat completion: {reason}"),
        }
    }

    /// A short label for metrics.
    pub fn label(&self) -> String {
        match self {
            Outcome::Connect(_) => "connect".into(),
            Outcome::Silent => "silent".into(),
            Outcome::Status { status, .. } => format!("http_{status}"),
            Outcome::InBand { .. } => "error_event".into(),
            Outcome::Invalid(_) => "invalid".into(),
        }
    }
}

/// The decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Try the same backend again after this pause.
    Retry(Duration),
    /// Move on to the next target; `cooldown` says how the backend's health is affected.
    FallOver(Cooldown),
    /// Relay the upstream's answer to the client as it is: no retry, no fallback.
    ToClient,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cooldown {
    /// Not the backend's fault (a request too long for its context).
    None,
    /// Counts as a failure toward the circuit breaker.
    Failure,
    /// Rate limited: cool down for this long (the `Retry-After`, or a default).
    RateLimited(Option<Duration>),
    /// The backend refused its own credential: a long cooldown, and an error in the log.
    Credential,
}

/// Decides after attempt number `tries_here` (1-based) on `backend`; `jitter` in [0, 1).
pub fn judge(outcome: &Outcome, tries_here: u32, backend: &Backend, jitter: f64) -> Verdict {
    let may_retry = tries_here <= backend.retries;
    let backoff = Duration::from_millis(50 + (jitter * 100.0) as u64);
    match outcome {
        Outcome::Connect(_) if may_retry => Verdict::Retry(backoff),
        Outcome::Connect(_) | Outcome::Silent | Outcome::Invalid(_) => {
            Verdict::FallOver(Cooldown::Failure)
        }
        Outcome::InBand { code, .. } => match code.as_deref() {
            Some("context_length_exceeded") => Verdict::FallOver(Cooldown::None),
            Some("rate_limit_exceeded") => Verdict::FallOver(Cooldown::RateLimited(None)),
            _ if may_retry => Verdict::Retry(backoff),
            _ => Verdict::FallOver(Cooldown::Failure),
        },
        Outcome::Status {
            status,
            retry_after,
            body,
        } => match status {
            500 | 502 | 503 | 504 if may_retry => Verdict::Retry(backoff),
            429 => match retry_after {
                // Never more than two attempts on one backend for a 429.
                Some(wait) if *wait <= backend.max_retry_after && tries_here < 2 => {
                    Verdict::Retry(*wait)
                }
                other => Verdict::FallOver(Cooldown::RateLimited(*other)),
            },
            400 if error_code(body).as_deref() == Some("context_length_exceeded") => {
                Verdict::FallOver(Cooldown::None)
            }
            // The backend's own key, not the client's request: never the client's problem.
            401 | 403 => Verdict::FallOver(Cooldown::Credential),
            400..=499 => Verdict::ToClient,
            _ => Verdict::FallOver(Cooldown::Failure),
        },
    }
}

/// The OpenAI-style `error.code` of an error body.
pub fn error_code(body: &[u8]) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = json.get("error")?;
    error
        .get("code")
        .and_then(|c| c.as_str())
        .or_else(|| error.get("type").and_then(|t| t.as_str()))
        .map(str::to_string)
}

/// A `Retry-After` value: delay seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::from_secs_f64(seconds.min(86_400.0)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> Backend {
        let yaml = "backends:\n  - name: b\n    url: http://127.0.0.1:1/v1\n    model: m\nroutes:\n  - name: r\n    utterances: [x]\n    targets: [b]\n";
        let config = crate::config::Config::parse(yaml, "t", std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("{e}"));
        config.backends[0].clone()
    }

    fn status(status: u16, retry_after: Option<u64>, body: &str) -> Outcome {
        Outcome::Status {
            status,
            retry_after: retry_after.map(Duration::from_millis),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_5xx_or_a_refused_connection_is_retried_once_then_falls_over() {
        let b = backend();
        for outcome in [status(503, None, ""), Outcome::Connect("refused".into())] {
            assert!(
                matches!(judge(&outcome, 1, &b, 0.5), Verdict::Retry(d) if d >= Duration::from_millis(50))
            );
            assert_eq!(
                judge(&outcome, 2, &b, 0.5),
                Verdict::FallOver(Cooldown::Failure)
            );
        }
    }

    #[test]
    fn a_short_retry_after_is_waited_out_once_a_long_or_missing_one_cools_down() {
        let b = backend();
        assert_eq!(
            judge(&status(429, Some(200), ""), 1, &b, 0.0),
            Verdict::Retry(Duration::from_millis(200))
        );
        assert_eq!(
            judge(&status(429, Some(200), ""), 2, &b, 0.0),
            Verdict::FallOver(Cooldown::RateLimited(Some(Duration::from_millis(200))))
        );
        assert_eq!(
            judge(&status(429, Some(60_000), ""), 1, &b, 0.0),
            Verdict::FallOver(Cooldown::RateLimited(Some(Duration::from_secs(60))))
        );
        assert_eq!(
            judge(&status(429, None, ""), 1, &b, 0.0),
            Verdict::FallOver(Cooldown::RateLimited(None))
        );
    }

    #[test]
    fn a_silent_backend_is_not_retried() {
        assert_eq!(
            judge(&Outcome::Silent, 1, &backend(), 0.0),
            Verdict::FallOver(Cooldown::Failure)
        );
    }

    #[test]
    fn context_length_falls_over_other_4xx_go_to_the_client() {
        let b = backend();
        let too_long = r#"{"error": {"message": "too long", "code": "context_length_exceeded"}}"#;
        assert_eq!(
            judge(&status(400, None, too_long), 1, &b, 0.0),
            Verdict::FallOver(Cooldown::None)
        );
        let policy = r#"{"error": {"message": "no", "code": "content_policy_violation"}}"#;
        for code in [400, 404, 413, 422] {
            assert_eq!(
                judge(&status(code, None, policy), 1, &b, 0.0),
                Verdict::ToClient
            );
        }
    }

    #[test]
    fn a_refused_credential_is_the_backends_failure_not_the_clients() {
        for code in [401, 403] {
            assert_eq!(
                judge(&status(code, None, ""), 1, &backend(), 0.0),
                Verdict::FallOver(Cooldown::Credential)
            );
        }
    }

    #[test]
    fn an_error_event_or_an_invalid_answer_is_a_failed_attempt() {
        let b = backend();
        let overloaded = Outcome::InBand {
            code: Some("server_error".into()),
            message: "overloaded".into(),
        };
        assert!(matches!(judge(&overloaded, 1, &b, 0.0), Verdict::Retry(_)));
        assert_eq!(
            judge(&overloaded, 2, &b, 0.0),
            Verdict::FallOver(Cooldown::Failure)
        );
        assert_eq!(
            judge(&Outcome::Invalid("text/html".into()), 1, &b, 0.0),
            Verdict::FallOver(Cooldown::Failure)
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after("0.5", now),
            Some(Duration::from_millis(500))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }
}
