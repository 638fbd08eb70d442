//! A validated config written back as `routes.yaml` (what `semroute fit` saves): every
//! setting spelled out, in the shape `raw.rs` reads, so the file loads to the same `Config`.
//! Comments of the original file are not carried over.

use super::backends::DEFAULT_MAX_OUTPUT_TOKENS;
use super::keys::{Auth, KeySource};
use super::tenants::{Limits, OnError, StateConfig};
use super::{
    Aggregation, Backend, Config, ConversationConfig, ConversationMode, Cost, DeviceChoice,
    Precision, Strategy,
};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Serialize)]
struct OutConfig<'a> {
    encoder: OutEncoder<'a>,
    threshold: f32,
    top_k: usize,
    aggregation: Aggregation,
    #[serde(skip_serializing_if = "Option::is_none")]
    default_route: Option<&'a str>,
    ambiguity_margin: f32,
    head_weight: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_classes_order: Option<&'a [String]>,
    conversation: OutConversation,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<OutState<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<OutAuth<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<OutGlobalLimits>,
    log_prompts: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache: Option<OutCache>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    backends: Vec<OutBackend<'a>>,
    routes: Vec<OutRoute<'a>>,
}

#[derive(Serialize)]
struct OutCache {
    #[serde(skip_serializing_if = "Option::is_none")]
    exact: Option<OutExact>,
    #[serde(skip_serializing_if = "Option::is_none")]
    semantic: Option<OutSemantic>,
    store: super::CacheStore,
    any_temperature: bool,
}

#[derive(Serialize)]
struct OutExact {
    ttl_s: u64,
    max_entries: u64,
    max_mb: u64,
}

#[derive(Serialize)]
struct OutSemantic {
    threshold: f32,
    ttl_s: u64,
}

impl OutCache {
    fn new(cache: &super::CacheConfig) -> OutCache {
        OutCache {
            exact: cache.exact.map(|e| OutExact {
                ttl_s: e.ttl.as_secs(),
                max_entries: e.max_entries,
                max_mb: e.max_bytes >> 20,
            }),
            semantic: cache.semantic.map(|s| OutSemantic {
                threshold: s.threshold,
                ttl_s: s.ttl.as_secs(),
            }),
            store: cache.store,
            any_temperature: cache.any_temperature,
        }
    }
}

#[derive(Serialize)]
struct OutConversation {
    mode: &'static str,
    history_turns: usize,
    stickiness: f32,
    switch_stickiness: f32,
    switch_score: f32,
    switch_margin: f32,
    temperature: f32,
    first_turn_weight: f32,
    assistant_weight: f32,
    follow_up_weight: f32,
    decay: f32,
}

impl OutConversation {
    fn new(c: &ConversationConfig) -> OutConversation {
        OutConversation {
            mode: match c.mode {
                ConversationMode::Last => "last",
                ConversationMode::Context => "context",
            },
            history_turns: c.history_turns,
            stickiness: c.stickiness,
            switch_stickiness: c.switch_stickiness,
            switch_score: c.switch_score,
            switch_margin: c.switch_margin,
            temperature: c.temperature,
            first_turn_weight: c.first_turn_weight,
            assistant_weight: c.assistant_weight,
            follow_up_weight: c.follow_up_weight,
            decay: c.decay,
        }
    }
}

#[derive(Serialize)]
struct OutBackend<'a> {
    name: &'a str,
    url: &'a str,
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key_env: Option<&'a str>,
    timeout_ms: u128,
    connect_timeout_ms: u128,
    first_byte_timeout_ms: u128,
    stream_idle_timeout_ms: u128,
    max_retry_after_ms: u128,
    retries: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_concurrent: Option<usize>,
    weight: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    cost: Option<Cost>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_classes: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health_check_interval_ms: Option<u128>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_stream_ms: Option<u128>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<OutLimits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    context_window: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u64>,
}

#[derive(Serialize)]
struct OutLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    rpm: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tpm: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usd_per_day: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usd_per_month: Option<f64>,
}

impl OutLimits {
    fn new(limits: &Limits) -> Option<OutLimits> {
        (!limits.is_empty()).then_some(OutLimits {
            rpm: limits.rpm,
            tpm: limits.tpm,
            usd_per_day: limits.usd_per_day,
            usd_per_month: limits.usd_per_month,
        })
    }
}

#[derive(Serialize)]
struct OutGlobalLimits {
    per_user: OutLimits,
}

#[derive(Serialize)]
struct OutState<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    redis: Option<&'a str>,
    prefix: &'a str,
    on_error: &'static str,
    timeout_ms: u128,
    reservation_ttl_s: u64,
}

impl<'a> OutState<'a> {
    fn new(state: &'a StateConfig) -> Option<OutState<'a>> {
        (*state != StateConfig::default()).then(|| OutState {
            redis: state.redis.as_deref(),
            prefix: &state.prefix,
            on_error: match state.on_error {
                OnError::FailOpen => "fail_open",
                OnError::FailClosed => "fail_closed",
            },
            timeout_ms: state.timeout.as_millis(),
            reservation_ttl_s: state.reservation_ttl.as_secs(),
        })
    }
}

#[derive(Serialize)]
struct OutAuth<'a> {
    required: bool,
    keys: Vec<OutKey<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_key_env: Option<&'a str>,
}

#[derive(Serialize)]
struct OutKey<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_env: Option<&'a str>,
    /// Only for a key the file gave this way (a key from a variable stays a variable).
    #[serde(skip_serializing_if = "Option::is_none")]
    key_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    routes: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backends: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_data_class: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<OutLimits>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    admin: bool,
}

impl<'a> OutAuth<'a> {
    fn new(auth: &'a Auth, config: &'a Config) -> Option<OutAuth<'a>> {
        if *auth == Auth::default() {
            return None;
        }
        let keys = auth
            .keys
            .iter()
            .map(|k| OutKey {
                name: &k.name,
                key_env: match &k.source {
                    KeySource::Env(name) => Some(name.as_str()),
                    KeySource::Sha256 => None,
                },
                key_sha256: (k.source == KeySource::Sha256).then(|| hex::encode(k.digest)),
                routes: k.routes.as_ref().map(|access| {
                    let mut names: Vec<&str> = access
                        .routes
                        .iter()
                        .map(|&r| config.route(r).name.as_str())
                        .collect();
                    if access.auto {
                        names.insert(0, "auto");
                    }
                    names
                }),
                backends: k.backends.as_ref().map(|list| {
                    list.iter()
                        .map(|&b| config.backend(b).name.as_str())
                        .collect()
                }),
                max_data_class: k.max_data_class.as_deref(),
                limits: OutLimits::new(&k.limits),
                admin: k.admin,
            })
            .collect();
        Some(OutAuth {
            required: auth.required,
            keys,
            admin_key_env: auth.admin_key.as_ref().map(|a| a.env.as_str()),
        })
    }
}

impl<'a> OutBackend<'a> {
    fn new(b: &'a Backend) -> OutBackend<'a> {
        OutBackend {
            name: &b.name,
            url: &b.url,
            model: &b.model,
            api_key_env: b.api_key_env.as_deref(),
            timeout_ms: b.timeout.as_millis(),
            connect_timeout_ms: b.connect_timeout.as_millis(),
            first_byte_timeout_ms: b.first_byte_timeout.as_millis(),
            stream_idle_timeout_ms: b.stream_idle_timeout.as_millis(),
            max_retry_after_ms: b.max_retry_after.as_millis(),
            retries: b.retries,
            max_concurrent: b.max_concurrent,
            weight: b.weight,
            cost: b.cost,
            data_classes: b.data_classes.as_deref(),
            health_check_interval_ms: b.health_check_interval.map(|d| d.as_millis()),
            upstream_stream: (!b.upstream_stream).then_some(false),
            max_stream_ms: b.max_stream.map(|d| d.as_millis()),
            limits: OutLimits::new(&b.limits),
            context_window: b.context_window,
            max_output_tokens: (b.max_output_tokens != DEFAULT_MAX_OUTPUT_TOKENS)
                .then_some(b.max_output_tokens),
        }
    }
}

#[derive(Serialize)]
struct OutEncoder<'a> {
    model: &'a str,
    revision: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    device: String,
    max_tokens: usize,
    precision: Precision,
    #[serde(skip_serializing_if = "Option::is_none")]
    threads: Option<usize>,
}

#[derive(Serialize)]
struct OutRoute<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    threshold: Option<f32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    keywords: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    patterns: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    utterances: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    targets: Vec<&'a str>,
    #[serde(skip_serializing_if = "is_fallback")]
    strategy: Strategy,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_class: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    experiment: Option<OutExperiment<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    escalate_on: Vec<super::Escalation>,
    #[serde(skip_serializing_if = "is_one")]
    max_escalations: usize,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    metadata: &'a BTreeMap<String, serde_json::Value>,
}

#[derive(Serialize)]
struct OutExperiment<'a> {
    name: &'a str,
    variants: BTreeMap<&'a str, f64>,
    sticky: super::StickyBy,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write the config as YAML: {0}")]
pub struct WriteError(String);

impl Config {
    /// The config as YAML, starting with `header` (each line becomes a `#` comment).
    /// `encoder.path` is written absolute, so the file may live anywhere.
    pub fn to_yaml(&self, header: &str) -> Result<String, WriteError> {
        let encoder = &self.encoder;
        let out = OutConfig {
            encoder: OutEncoder {
                model: &encoder.model,
                revision: &encoder.revision,
                path: encoder.path.as_ref().map(|p| {
                    std::path::absolute(p)
                        .unwrap_or_else(|_| p.clone())
                        .display()
                        .to_string()
                }),
                device: match encoder.device {
                    DeviceChoice::Cpu => "cpu".into(),
                    DeviceChoice::Cuda(n) => format!("cuda:{n}"),
                    DeviceChoice::Metal => "metal".into(),
                    DeviceChoice::Auto => "auto".into(),
                },
                max_tokens: encoder.max_tokens,
                precision: encoder.precision,
                threads: encoder.threads,
            },
            threshold: self.threshold.get(),
            top_k: self.top_k,
            aggregation: self.aggregation,
            default_route: self.default_route.map(|r| self.route(r).name.as_str()),
            ambiguity_margin: self.ambiguity_margin,
            head_weight: self.head_weight,
            data_classes_order: self
                .data_classes
                .in_use()
                .then(|| self.data_classes.names()),
            conversation: OutConversation::new(&self.conversation),
            state: OutState::new(&self.state),
            auth: OutAuth::new(&self.auth, self),
            limits: OutLimits::new(&self.per_user).map(|per_user| OutGlobalLimits { per_user }),
            log_prompts: self.log_prompts,
            cache: self.cache.as_ref().map(OutCache::new),
            backends: self.backends.iter().map(OutBackend::new).collect(),
            routes: self
                .routes
                .iter()
                .map(|route| OutRoute {
                    name: route.name.as_str(),
                    description: route.description.as_deref(),
                    threshold: route.threshold.map(|t| t.get()),
                    keywords: route.keywords.iter().map(|k| k.as_str()).collect(),
                    patterns: route.patterns.iter().map(|p| p.as_str()).collect(),
                    utterances: route.utterances.iter().map(String::as_str).collect(),
                    targets: route
                        .dispatch
                        .targets
                        .iter()
                        .map(|&t| self.backend(t).name.as_str())
                        .collect(),
                    strategy: route.dispatch.strategy,
                    data_class: route.dispatch.data_class.as_deref(),
                    experiment: route.dispatch.experiment.as_ref().map(|e| OutExperiment {
                        name: &e.name,
                        variants: e
                            .variants
                            .iter()
                            .map(|v| (self.backend(v.backend).name.as_str(), v.share))
                            .collect(),
                        sticky: e.sticky,
                    }),
                    escalate_on: route.dispatch.escalate_on.clone(),
                    max_escalations: route.dispatch.max_escalations,
                    metadata: &route.metadata,
                })
                .collect(),
        };
        let body = serde_saphyr::to_string(&out).map_err(|e| WriteError(e.to_string()))?;
        let mut text: String = header.lines().map(|l| format!("# {l}\n")).collect();
        text.push_str(&body);
        Ok(text)
    }
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

fn is_fallback(strategy: &Strategy) -> bool {
    *strategy == Strategy::Fallback
}
