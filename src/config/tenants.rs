//! The tenants' sections besides the keys (`keys.rs`): `limits:` (rates and budgets per
//! user, per key, per backend) and `state:` (where those counters live: this process, or a
//! Redis every replica shares).

use super::Checker;
use super::raw::{RawGlobalLimits, RawLimits, RawState};
use serde_saphyr::Spanned;
use std::time::Duration;

/// How long a Redis call may take before `on_error` decides.
pub const DEFAULT_STATE_TIMEOUT_MS: i64 = 50;
/// How long a budget reservation lives if its request never settles it (a replica died).
pub const DEFAULT_RESERVATION_TTL_S: i64 = 900;
pub const DEFAULT_PREFIX: &str = "semroute";

/// Requests and tokens per minute, and USD per UTC day and month; each `None`: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Limits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub usd_per_day: Option<f64>,
    pub usd_per_month: Option<f64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

/// What to do when Redis cannot be reached in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Go on with this process's own counters, and say so in the log and metrics.
    #[default]
    FailOpen,
    /// Refuse the request (503).
    FailClosed,
}

/// `state:`: where counters, reservations and shared health live.
#[derive(Debug, Clone, PartialEq)]
pub struct StateConfig {
    /// `None`: in this process only.
    pub redis: Option<String>,
    pub prefix: String,
    pub on_error: OnError,
    pub timeout: Duration,
    pub reservation_ttl: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            redis: None,
            prefix: DEFAULT_PREFIX.into(),
            on_error: OnError::default(),
            timeout: Duration::from_millis(DEFAULT_STATE_TIMEOUT_MS as u64),
            reservation_ttl: Duration::from_secs(DEFAULT_RESERVATION_TTL_S as u64),
        }
    }
}

const MAX_RPM: i64 = 100_000_000;
const MAX_TPM: i64 = 100_000_000_000;
/// Budgets up to a million USD: counted in nano-dollars, exact in Redis's Lua numbers.
const MAX_USD: f64 = 1e6;

impl Checker<'_> {
    pub(super) fn state(&mut self, raw: Option<RawState>) -> Option<StateConfig> {
        let Some(raw) = raw else {
            return Some(StateConfig::default());
        };
        let redis = raw.redis.as_ref().map(|r| self.redis_url(r));
        let prefix = match &raw.prefix {
            Some(p) if valid_prefix(&p.value) => Some(p.value.clone()),
            Some(p) => {
                self.issue(
                    "state.prefix".into(),
                    p.referenced,
                    format!("`{}` is not a usable key prefix", p.value),
                    "use letters, digits, `_`, `-`, `.` and `:` only, such as `semroute`",
                );
                None
            }
            None => Some(DEFAULT_PREFIX.into()),
        };
        let on_error = match &raw.on_error {
            None => Some(OnError::default()),
            Some(v) => match v.value.trim() {
                "fail_open" => Some(OnError::FailOpen),
                "fail_closed" => Some(OnError::FailClosed),
                other => {
                    self.issue(
                        "state.on_error".into(),
                        v.referenced,
                        format!("unknown `on_error` value `{other}`"),
                        "use fail_open (go on with this process's counters) or fail_closed (refuse with 503)",
                    );
                    None
                }
            },
        };
        let timeout = self.duration_or("state.timeout_ms", &raw.timeout_ms, 1, 60_000, || {
            DEFAULT_STATE_TIMEOUT_MS
        });
        let ttl = self.duration_or(
            "state.reservation_ttl_s",
            &raw.reservation_ttl_s,
            1,
            86_400,
            || DEFAULT_RESERVATION_TTL_S,
        );
        Some(StateConfig {
            redis: match redis {
                Some(url) => Some(url?),
                None => None,
            },
            prefix: prefix?,
            on_error: on_error?,
            timeout: Duration::from_millis(timeout? as u64),
            reservation_ttl: Duration::from_secs(ttl? as u64),
        })
    }

    /// A whole number in range, else its default (`None`: out of range).
    fn duration_or(
        &mut self,
        path: &str,
        raw: &Option<Spanned<i64>>,
        min: i64,
        max: i64,
        default: impl FnOnce() -> i64,
    ) -> Option<i64> {
        match raw {
            Some(v) => self.bounded(path, v, min, max).map(|v| v as i64),
            None => Some(default()),
        }
    }

    /// A Redis URL; never echoed, as it may carry a password.
    fn redis_url(&mut self, raw: &Spanned<String>) -> Option<String> {
        let text = raw.value.trim();
        // `rediss://` (TLS) is not built in yet: refused here rather than failing later.
        let scheme_ok = url::Url::parse(text)
            .is_ok_and(|u| u.scheme() == "redis" && u.host_str().is_some_and(|h| !h.is_empty()));
        if scheme_ok {
            return Some(text.to_string());
        }
        self.issue(
            "state.redis".into(),
            raw.referenced,
            "this is not a usable Redis URL (not shown, in case it holds a password)".into(),
            "write redis://host:port/db, such as redis://127.0.0.1:6379/0 (TLS, rediss://, is not supported yet: reach Redis over a private network or a local TLS tunnel)",
        );
        None
    }

    /// Rates and budgets at `at`; `money` is whether budgets are allowed there.
    pub(super) fn limits_section(
        &mut self,
        at: &str,
        raw: Option<&RawLimits>,
        money: bool,
    ) -> Option<Limits> {
        let Some(raw) = raw else {
            return Some(Limits::default());
        };
        let mut count = |field: &str, v: &Option<Spanned<i64>>, max: i64| match v {
            Some(v) => self
                .bounded(&format!("{at}.{field}"), v, 1, max)
                .map(|n| Some(n as u64)),
            None => Some(None),
        };
        let rpm = count("rpm", &raw.rpm, MAX_RPM);
        let tpm = count("tpm", &raw.tpm, MAX_TPM);
        let usd_per_day = self.usd(at, "usd_per_day", &raw.usd_per_day, money);
        let usd_per_month = self.usd(at, "usd_per_month", &raw.usd_per_month, money);
        Some(Limits {
            rpm: rpm?,
            tpm: tpm?,
            usd_per_day: usd_per_day?,
            usd_per_month: usd_per_month?,
        })
    }

    fn usd(
        &mut self,
        at: &str,
        field: &str,
        raw: &Option<Spanned<f64>>,
        money: bool,
    ) -> Option<Option<f64>> {
        let Some(v) = raw else {
            return Some(None);
        };
        if !money {
            self.issue(
                format!("{at}.{field}"),
                v.referenced,
                "a backend's limits are its provider's quota: rpm and tpm only".into(),
                "put budgets on client keys or on `limits.per_user`",
            );
            return None;
        }
        if !(v.value.is_finite() && (0.0..=MAX_USD).contains(&v.value)) {
            self.issue(
                format!("{at}.{field}"),
                v.referenced,
                format!("{} is not a budget in USD", v.value),
                "write an amount from 0 to 1000000, such as 25 or 0.5",
            );
            return None;
        }
        Some(Some(v.value))
    }

    pub(super) fn per_user(&mut self, raw: Option<&RawGlobalLimits>) -> Option<Limits> {
        self.limits_section(
            "limits.per_user",
            raw.and_then(|r| r.per_user.as_ref()),
            true,
        )
    }
}

/// Whether `name` may be a prefix or a key's name (it becomes part of counter names).
pub(super) fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= 64
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}
