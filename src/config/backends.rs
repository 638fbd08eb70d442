//! The `backends:` section and each route's `targets`, `strategy` and `data_class`: the LLM
//! endpoints requests are dispatched to, validated into checked types like the rest of the
//! config.

use super::Checker;
use super::classes::{Accepted, DataClasses};
use super::raw::{RawBackend, RawRoute};
use serde::Serialize;
use serde_saphyr::Spanned;
use std::collections::HashMap;
use std::time::Duration;

/// Index of a backend in `Config::backends`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub usize);

/// How a route picks among its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// In the order written.
    #[default]
    Fallback,
    /// Weighted round robin over the healthy targets.
    RoundRobin,
    /// Fewest requests in flight.
    LeastBusy,
    /// Lowest peak-EWMA latency of two picked at random.
    Latency,
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
/// Longest timeout accepted: a day.
const MAX_MS: i64 = 86_400_000;

/// A route's dispatch settings, resolved against the backends.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dispatch {
    pub targets: Vec<BackendId>,
    pub strategy: Strategy,
    pub data_class: Option<String>,
}

impl Checker<'_> {
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

    fn backend(&mut self, at: &str, raw: RawBackend, classes: &DataClasses) -> Option<Backend> {
        let mut valid = true;
        if raw.name.value.trim().is_empty() {
            self.issue(
                format!("{at}.name"),
                raw.name.referenced,
                "the backend name is empty".into(),
                "write a short name such as `fast-small`",
            );
            valid = false;
        }
        let url = self.url(&format!("{at}.url"), &raw.url);
        let model = match &raw.model {
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
        };
        let api_key_env = match &raw.api_key_env {
            Some(v) if valid_env_name(&v.value) => Some(v.value.clone()),
            Some(v) => {
                // The value is not echoed: it may be the key itself, pasted by mistake.
                self.issue(
                    format!("{at}.api_key_env"),
                    v.referenced,
                    "this is not an environment variable name (the value is not shown, in case it is a key)".into(),
                    "write the variable's name (letters, digits, `_`), such as OPENAI_API_KEY, never the key itself",
                );
                valid = false;
                None
            }
            None => None,
        };
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
        let health_check_interval = match &raw.health_check_interval_ms {
            Some(v) => self
                .bounded(&format!("{at}.health_check_interval_ms"), v, 100, MAX_MS)
                .map(|v| Some(Duration::from_millis(v as u64))),
            None => Some(None),
        };
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
        let cost = match &raw.cost {
            Some(c) => {
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
            None => Some(None),
        };
        let max_stream = match &raw.max_stream_ms {
            Some(v) => self
                .bounded(&format!("{at}.max_stream_ms"), v, 1, MAX_MS)
                .map(|v| Some(Duration::from_millis(v as u64))),
            None => Some(None),
        };
        let data_classes = match &raw.data_classes {
            Some(list) => {
                let mut names = Vec::with_capacity(list.len());
                for (j, class) in list.iter().enumerate() {
                    match self.known_class(format!("{at}.data_classes[{j}]"), class, classes) {
                        Some(name) => names.push(name),
                        None => valid = false,
                    }
                }
                Some(names)
            }
            None => None,
        };
        let accepted =
            match &data_classes {
                Some(list) => Accepted::Only(list.clone()),
                None if classes.in_use() => {
                    self.notes.push(super::ConfigIssue {
                    path: format!("{at}.data_classes"),
                    line: Some(raw.name.referenced.line()).filter(|&l| l > 0),
                    message: format!(
                        "backend `{}` lists no `data_classes`, so it receives only `{}` requests",
                        raw.name.value,
                        classes.lowest()
                    ),
                    hint: Some(format!(
                        "list every class it may receive, e.g. `data_classes: [{}]`",
                        classes.names().iter().take(2).cloned().collect::<Vec<_>>().join(", ")
                    )),
                });
                    Accepted::Only(vec![classes.lowest().to_string()])
                }
                None => Accepted::Any,
            };
        if !valid {
            return None;
        }
        Some(Backend {
            name: raw.name.value,
            url: url?,
            model: model?,
            api_key_env,
            timeout: timeout?,
            connect_timeout: connect_timeout?,
            first_byte_timeout: first_byte_timeout?,
            stream_idle_timeout: stream_idle_timeout?,
            max_retry_after: max_retry_after?,
            retries: retries?,
            max_concurrent: max_concurrent?,
            weight: weight?,
            cost: cost?,
            data_classes,
            accepted,
            health_check_interval: health_check_interval?,
            upstream_stream: raw.upstream_stream.unwrap_or(true),
            max_stream: max_stream?,
        })
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

    /// A route's targets, strategy and data class, resolved against `backends` (`None`
    /// when they are invalid: then only what does not depend on them is checked).
    pub(super) fn dispatch(
        &mut self,
        at: &str,
        raw: &RawRoute,
        backends: Option<&[Backend]>,
        classes: &DataClasses,
    ) -> Option<Dispatch> {
        let mut valid = true;
        let checked = backends.is_some();
        let backends = backends.unwrap_or(&[]);
        let mut targets = Vec::with_capacity(raw.targets.len());
        for (j, target) in raw.targets.iter().enumerate().filter(|_| checked) {
            match backends.iter().position(|b| b.name == target.value) {
                Some(i) if targets.contains(&BackendId(i)) => {
                    self.issue(
                        format!("{at}.targets[{j}]"),
                        target.referenced,
                        format!("backend `{}` is listed twice", target.value),
                        "list each backend once, in fallback order",
                    );
                    valid = false;
                }
                Some(i) => targets.push(BackendId(i)),
                None => {
                    let known: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
                    self.issue(
                        format!("{at}.targets[{j}]"),
                        target.referenced,
                        format!("there is no backend named `{}`", target.value),
                        &if known.is_empty() {
                            "define it under `backends:` (name, url, model)".to_string()
                        } else {
                            format!("use one of: {}", known.join(", "))
                        },
                    );
                    valid = false;
                }
            }
        }
        if !backends.is_empty() && raw.targets.is_empty() {
            self.issue(
                format!("{at}.targets"),
                raw.name.referenced,
                format!("route `{}` has no targets", raw.name.value),
                "add `targets:` with the backends this route dispatches to, in fallback order",
            );
            valid = false;
        }
        let strategy = match &raw.strategy {
            None => Strategy::default(),
            Some(s) => match s.value.trim() {
                "fallback" => Strategy::Fallback,
                "round_robin" => Strategy::RoundRobin,
                "least_busy" => Strategy::LeastBusy,
                "latency" => Strategy::Latency,
                other => {
                    self.issue(
                        format!("{at}.strategy"),
                        s.referenced,
                        format!("unknown strategy `{other}`"),
                        "use fallback, round_robin, least_busy or latency",
                    );
                    valid = false;
                    Strategy::default()
                }
            },
        };
        let data_class = match &raw.data_class {
            Some(class) => {
                let known = self.known_class(format!("{at}.data_class"), class, classes);
                valid &= known.is_some();
                known
            }
            None => None,
        };
        if let (Some(class), Some(line)) = (&data_class, raw.data_class.as_ref()) {
            let eligible = targets.iter().any(|t| backends[t.0].accepts(Some(class)));
            if valid && !targets.is_empty() && !eligible {
                self.issue(
                    format!("{at}.data_class"),
                    line.referenced,
                    format!("none of the route's targets accepts data class `{class}`"),
                    "add the class to a target's `data_classes`, or add a target that accepts it",
                );
                valid = false;
            }
        }
        valid.then_some(Dispatch {
            targets,
            strategy,
            data_class,
        })
    }
}

fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
