//! The `backends:` section: the LLM endpoints requests are dispatched to, each validated
//! into a `Backend` (a usable base URL, a model, time limits, data classes it accepts).

use super::Checker;
use super::ConfigIssue;
use super::classes::{Accepted, DataClasses};
use super::raw::RawBackend;
use super::tenants::Limits;
use serde::Serialize;
use serde_saphyr::Spanned;
use std::collections::HashMap;
use std::time::Duration;

/// A backend's position in `Config::backends`. Only validation mints them (the field and
/// the constructor are private to `config`), so an id always names a backend of its config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(usize);

impl BackendId {
    pub(in crate::config) fn new(index: usize) -> BackendId {
        BackendId(index)
    }

    /// The backend's position in `Config::backends`.
    pub fn index(self) -> usize {
        self.0
    }

    /// An id for unit tests that need backends without a config.
    #[cfg(test)]
    pub(crate) fn at(index: usize) -> BackendId {
        BackendId(index)
    }
}

/// Price per million tokens, in USD.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Cost {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

/// A validated backend: an OpenAI-compatible endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    pub name: String,
    /// Base URL, without a trailing slash (`…/v1`).
    pub url: String,
    /// The model id sent upstream in place of the client's.
    pub model: String,
    /// Environment variable holding the API key (sent as a Bearer token).
    pub api_key_env: Option<String>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub stream_idle_timeout: Duration,
    /// A 429's `Retry-After` up to this long is waited out on the same backend.
    pub max_retry_after: Duration,
    /// Retries on the same backend after a connection failure or a 5xx.
    pub retries: u32,
    pub max_concurrent: Option<usize>,
    pub weight: u32,
    pub cost: Option<Cost>,
    /// Data classes it may receive, as written (`None`: not given).
    pub data_classes: Option<Vec<String>>,
    /// What it accepts: its `data_classes`; without them every class when the config uses
    /// none, else only the lowest class.
    pub accepted: Accepted,
    /// Active health checks (`GET {url}/models`); `None`: off.
    pub health_check_interval: Option<Duration>,
    /// Non-streaming requests are sent upstream as streams and reassembled (so the
    /// first-byte and idle timeouts apply); `false` sends them as they are.
    pub upstream_stream: bool,
    /// A stream (one attempt) running longer than this is broken off; `None`: no limit.
    pub max_stream: Option<Duration>,
    /// The provider's quota (`rpm`, `tpm`): paced to, instead of collecting 429s.
    pub limits: Limits,
    /// Tokens the model holds (prompt and answer); `None`: not known, never skipped.
    pub context_window: Option<u64>,
    /// Output tokens assumed for a request that sets no `max_tokens`.
    pub max_output_tokens: u64,
}

impl Backend {
    /// Whether a request of `data_class` (`None`: unclassified) may be sent here.
    pub fn accepts(&self, data_class: Option<&str>) -> bool {
        match (data_class, &self.accepted) {
            (Some(class), Accepted::Only(allowed)) => allowed.iter().any(|a| a == class),
            _ => true,
        }
    }
}

pub const DEFAULT_TIMEOUT_MS: i64 = 60_000;
pub const DEFAULT_CONNECT_TIMEOUT_MS: i64 = 5_000;
pub const DEFAULT_FIRST_BYTE_TIMEOUT_MS: i64 = 10_000;
pub const DEFAULT_STREAM_IDLE_TIMEOUT_MS: i64 = 10_000;
pub const DEFAULT_MAX_RETRY_AFTER_MS: i64 = 3_000;
pub const DEFAULT_RETRIES: i64 = 1;
/// Output tokens a request without `max_tokens` is assumed to take, for budgets and
/// context windows, when the backend sets no `max_output_tokens`.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 4096;
/// Largest context window or output cap accepted.
const MAX_TOKENS: i64 = 100_000_000;
/// Longest timeout accepted: a day.
const MAX_MS: i64 = 86_400_000;

/// How long a backend is waited for, and how often it is probed.
struct Timing {
    timeout: Duration,
    connect_timeout: Duration,
    first_byte_timeout: Duration,
    stream_idle_timeout: Duration,
    max_retry_after: Duration,
    health_check_interval: Option<Duration>,
}

/// How much is asked of a backend: retries, requests in flight, its share of the traffic.
struct Load {
    retries: u32,
    max_concurrent: Option<usize>,
    weight: u32,
}

impl Checker<'_> {
    /// Every backend, each name used once (`None` if any backend is invalid).
    pub(super) fn backends(
        &mut self,
        raw: Vec<RawBackend>,
        classes: &DataClasses,
    ) -> Option<Vec<Backend>> {
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut backends = Vec::with_capacity(raw.len());
        let mut all_valid = true;
        for (i, raw) in raw.into_iter().enumerate() {
            let at = format!("backends[{i}]");
            if let Some(first) = seen.get(&raw.name.value) {
                self.issue(
                    format!("{at}.name"),
                    raw.name.referenced,
                    format!(
                        "backend name `{}` is already used (line {first})",
                        raw.name.value
                    ),
                    "give every backend a unique name",
                );
                all_valid = false;
            } else {
                seen.insert(raw.name.value.clone(), raw.name.referenced.line());
            }
            match self.backend(&at, raw, classes) {
                Some(b) => backends.push(b),
                None => all_valid = false,
            }
        }
        all_valid.then_some(backends)
    }

    /// One backend, with every problem in it reported (`None` if there is any).
    fn backend(&mut self, at: &str, raw: RawBackend, classes: &DataClasses) -> Option<Backend> {
        // Every step reports its own problems, so all of them run before any result is used.
        let named = self.backend_name(at, &raw.name);
        let url = self.url(&format!("{at}.url"), &raw.url);
        let model = self.backend_model(at, &raw);
        let api_key_env = self.api_key_env(at, raw.api_key_env.as_ref());
        let timing = self.timing(at, &raw);
        let load = self.load(at, &raw);
        let limits = self.limits_section(&format!("{at}.limits"), raw.limits.as_ref(), false);
        let tokens = self.token_sizes(at, &raw);
        let cost = self.cost(at, &raw);
        let max_stream = self.optional_ms(at, "max_stream_ms", &raw.max_stream_ms, 1);
        let received = self.backend_classes(at, &raw, classes);
        let ((data_classes, accepted), timing, load) = (received?, timing?, load?);
        let (context_window, max_output_tokens) = tokens?;
        if !named {
            return None;
        }
        Some(Backend {
            name: raw.name.value,
            url: url?,
            model: model?,
            api_key_env: api_key_env?,
            timeout: timing.timeout,
            connect_timeout: timing.connect_timeout,
            first_byte_timeout: timing.first_byte_timeout,
            stream_idle_timeout: timing.stream_idle_timeout,
            max_retry_after: timing.max_retry_after,
            retries: load.retries,
            max_concurrent: load.max_concurrent,
            weight: load.weight,
            limits: limits?,
            context_window,
            max_output_tokens,
            cost: cost?,
            data_classes,
            accepted,
            health_check_interval: timing.health_check_interval,
            upstream_stream: raw.upstream_stream.unwrap_or(true),
            max_stream: max_stream?,
        })
    }

    /// Whether the name is usable (uniqueness is checked across backends).
    fn backend_name(&mut self, at: &str, raw: &Spanned<String>) -> bool {
        if raw.value.trim().is_empty() {
            self.issue(
                format!("{at}.name"),
                raw.referenced,
                "the backend name is empty".into(),
                "write a short name such as `fast-small`",
            );
            return false;
        }
        true
    }

    /// The model id sent upstream: required, not blank.
    fn backend_model(&mut self, at: &str, raw: &RawBackend) -> Option<String> {
        match &raw.model {
            Some(m) if !m.value.trim().is_empty() => Some(m.value.clone()),
            Some(m) => {
                self.issue(
                    format!("{at}.model"),
                    m.referenced,
                    "the model id is empty".into(),
                    "write the model id the provider expects, such as `gpt-4o-mini`",
                );
                None
            }
            None => {
                self.issue(
                    format!("{at}.model"),
                    raw.name.referenced,
                    format!("backend `{}` has no `model`", raw.name.value),
                    "add `model:` with the model id sent upstream, such as `gpt-4o-mini`",
                );
                None
            }
        }
    }

    /// The name of the variable holding the key, if one is given (`None`: invalid).
    fn api_key_env(&mut self, at: &str, raw: Option<&Spanned<String>>) -> Option<Option<String>> {
        match raw {
            Some(v) if valid_env_name(&v.value) => Some(Some(v.value.clone())),
            Some(v) => {
                // The value is not echoed: it may be the key itself, pasted by mistake.
                self.issue(
                    format!("{at}.api_key_env"),
                    v.referenced,
                    "this is not an environment variable name (the value is not shown, in case it is a key)".into(),
                    "write the variable's name (letters, digits, `_`), such as OPENAI_API_KEY, never the key itself",
                );
                None
            }
            None => Some(None),
        }
    }

    /// The timeouts (each in range, else its default) and the health-check interval.
    fn timing(&mut self, at: &str, raw: &RawBackend) -> Option<Timing> {
        let mut ms = |field: &str, value: &Option<Spanned<i64>>, default: i64, min: i64| match value
        {
            Some(v) => self
                .bounded(&format!("{at}.{field}"), v, min, MAX_MS)
                .map(|v| Duration::from_millis(v as u64)),
            None => Some(Duration::from_millis(default as u64)),
        };
        let timeout = ms("timeout_ms", &raw.timeout_ms, DEFAULT_TIMEOUT_MS, 1);
        let connect_timeout = ms(
            "connect_timeout_ms",
            &raw.connect_timeout_ms,
            DEFAULT_CONNECT_TIMEOUT_MS,
            1,
        );
        let first_byte_timeout = ms(
            "first_byte_timeout_ms",
            &raw.first_byte_timeout_ms,
            DEFAULT_FIRST_BYTE_TIMEOUT_MS,
            1,
        );
        let stream_idle_timeout = ms(
            "stream_idle_timeout_ms",
            &raw.stream_idle_timeout_ms,
            DEFAULT_STREAM_IDLE_TIMEOUT_MS,
            1,
        );
        let max_retry_after = ms(
            "max_retry_after_ms",
            &raw.max_retry_after_ms,
            DEFAULT_MAX_RETRY_AFTER_MS,
            0,
        );
        let health_check_interval = self.optional_ms(
            at,
            "health_check_interval_ms",
            &raw.health_check_interval_ms,
            100,
        );
        Some(Timing {
            timeout: timeout?,
            connect_timeout: connect_timeout?,
            first_byte_timeout: first_byte_timeout?,
            stream_idle_timeout: stream_idle_timeout?,
            max_retry_after: max_retry_after?,
            health_check_interval: health_check_interval?,
        })
    }

    /// A time limit that is off unless given (`None`: out of range).
    fn optional_ms(
        &mut self,
        at: &str,
        field: &str,
        value: &Option<Spanned<i64>>,
        min: i64,
    ) -> Option<Option<Duration>> {
        match value {
            Some(v) => self
                .bounded(&format!("{at}.{field}"), v, min, MAX_MS)
                .map(|v| Some(Duration::from_millis(v as u64))),
            None => Some(None),
        }
    }

    /// Retries, requests in flight and weight, each in range or its default.
    fn load(&mut self, at: &str, raw: &RawBackend) -> Option<Load> {
        let retries = match &raw.retries {
            Some(v) => self
                .bounded(&format!("{at}.retries"), v, 0, 10)
                .map(|v| v as u32),
            None => Some(DEFAULT_RETRIES as u32),
        };
        let max_concurrent = match &raw.max_concurrent {
            Some(v) => self
                .bounded(&format!("{at}.max_concurrent"), v, 1, 1_000_000)
                .map(Some),
            None => Some(None),
        };
        let weight = match &raw.weight {
            Some(v) => self
                .bounded(&format!("{at}.weight"), v, 1, 1_000)
                .map(|v| v as u32),
            None => Some(1),
        };
        Some(Load {
            retries: retries?,
            max_concurrent: max_concurrent?,
            weight: weight?,
        })
    }

    /// The context window and the output cap assumed when a request sets no `max_tokens`.
    fn token_sizes(&mut self, at: &str, raw: &RawBackend) -> Option<(Option<u64>, u64)> {
        let window = match &raw.context_window {
            Some(v) => self
                .bounded(&format!("{at}.context_window"), v, 1, MAX_TOKENS)
                .map(|n| Some(n as u64)),
            None => Some(None),
        };
        let output = match &raw.max_output_tokens {
            Some(v) => self
                .bounded(&format!("{at}.max_output_tokens"), v, 1, MAX_TOKENS)
                .map(|n| n as u64),
            None => Some(DEFAULT_MAX_OUTPUT_TOKENS),
        };
        Some((window?, output?))
    }

    /// The price per million tokens, if given (`None`: invalid).
    fn cost(&mut self, at: &str, raw: &RawBackend) -> Option<Option<Cost>> {
        let Some(c) = &raw.cost else {
            return Some(None);
        };
        let ok = [c.input_per_mtok, c.output_per_mtok]
            .iter()
            .all(|v| v.is_finite() && *v >= 0.0);
        if !ok {
            self.issue(
                format!("{at}.cost"),
                raw.name.referenced,
                "costs must be zero or more".into(),
                "write USD per million tokens, such as {input_per_mtok: 0.15, output_per_mtok: 0.60}",
            );
        }
        ok.then_some(Some(Cost {
            input_per_mtok: c.input_per_mtok,
            output_per_mtok: c.output_per_mtok,
        }))
    }

    /// The classes it may receive as written (each a known class), and what it accepts.
    fn backend_classes(
        &mut self,
        at: &str,
        raw: &RawBackend,
        classes: &DataClasses,
    ) -> Option<(Option<Vec<String>>, Accepted)> {
        let Some(list) = &raw.data_classes else {
            return Some((None, self.accepted_without_a_list(at, &raw.name, classes)));
        };
        let mut valid = true;
        let mut names = Vec::with_capacity(list.len());
        for (j, class) in list.iter().enumerate() {
            match self.known_class(format!("{at}.data_classes[{j}]"), class, classes) {
                Some(name) => names.push(name),
                None => valid = false,
            }
        }
        valid.then(|| (Some(names.clone()), Accepted::Only(names)))
    }

    /// Without `data_classes`: every request when the config uses no classes, else only the
    /// lowest class (which `validate` points out).
    fn accepted_without_a_list(
        &mut self,
        at: &str,
        name: &Spanned<String>,
        classes: &DataClasses,
    ) -> Accepted {
        if !classes.in_use() {
            return Accepted::Any;
        }
        self.notes.push(ConfigIssue {
            path: format!("{at}.data_classes"),
            line: Some(name.referenced.line()).filter(|&l| l > 0),
            message: format!(
                "backend `{}` lists no `data_classes`, so it receives only `{}` requests",
                name.value,
                classes.lowest()
            ),
            hint: Some(format!(
                "list every class it may receive, e.g. `data_classes: [{}]`",
                classes
                    .names()
                    .iter()
                    .take(2)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        });
        Accepted::Only(vec![classes.lowest().to_string()])
    }

    fn url(&mut self, at: &str, raw: &Spanned<String>) -> Option<String> {
        let text = raw.value.trim();
        let parsed = url::Url::parse(text);
        let problem = match &parsed {
            Err(err) => Some(err.to_string()),
            Ok(u) if u.scheme() != "http" && u.scheme() != "https" => {
                Some(format!("the scheme is `{}`", u.scheme()))
            }
            Ok(u) if u.host_str().is_none_or(str::is_empty) => Some("there is no host".into()),
            Ok(u) if u.query().is_some() || u.fragment().is_some() => {
                Some("a base URL takes no query or fragment".into())
            }
            // Not echoed: the text holds a credential.
            Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                self.issue(
                    at.into(),
                    raw.referenced,
                    "the URL carries credentials (user:password@), which would be sent to the backend and could be echoed back (the URL is not shown)".into(),
                    "remove them from the URL and put the key in an environment variable named by `api_key_env`",
                );
                return None;
            }
            Ok(_) => None,
        };
        if let Some(problem) = problem {
            self.issue(
                at.into(),
                raw.referenced,
                format!("`{text}` is not a usable base URL: {problem}"),
                "write the OpenAI-compatible base URL, such as https://api.openai.com/v1 or http://127.0.0.1:9001/v1",
            );
            return None;
        }
        Some(text.trim_end_matches('/').to_string())
    }
}

pub(super) fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
