//! The YAML shape of `routes.yaml`, exactly as written: unknown keys are refused and every
//! value keeps the line it came from, so validation (the rest of `config/`) can point at it.

use serde::Deserialize;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub encoder: Option<RawEncoder>,
    #[serde(default)]
    pub threshold: Option<Spanned<f64>>,
    #[serde(default)]
    pub top_k: Option<Spanned<i64>>,
    #[serde(default)]
    pub aggregation: Option<Spanned<RawAggregation>>,
    #[serde(default)]
    pub default_route: Option<Spanned<String>>,
    #[serde(default)]
    pub ambiguity_margin: Option<Spanned<f64>>,
    #[serde(default)]
    pub head_weight: Option<Spanned<f64>>,
    #[serde(default)]
    pub data_classes_order: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub conversation: Option<RawConversation>,
    #[serde(default)]
    pub state: Option<RawState>,
    #[serde(default)]
    pub auth: Option<RawAuth>,
    #[serde(default)]
    pub limits: Option<RawGlobalLimits>,
    #[serde(default)]
    pub log_prompts: Option<bool>,
    #[serde(default)]
    pub cache: Option<super::cache::RawCache>,
    #[serde(default)]
    pub backends: Vec<RawBackend>,
    pub routes: Spanned<Vec<RawRoute>>,
}

/// `conversation:`: how earlier turns weigh in.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConversation {
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
    #[serde(default)]
    pub history_turns: Option<Spanned<i64>>,
    #[serde(default)]
    pub stickiness: Option<Spanned<f64>>,
    #[serde(default)]
    pub switch_stickiness: Option<Spanned<f64>>,
    #[serde(default)]
    pub switch_score: Option<Spanned<f64>>,
    #[serde(default)]
    pub switch_margin: Option<Spanned<f64>>,
    #[serde(default)]
    pub temperature: Option<Spanned<f64>>,
    #[serde(default)]
    pub first_turn_weight: Option<Spanned<f64>>,
    #[serde(default)]
    pub assistant_weight: Option<Spanned<f64>>,
    #[serde(default)]
    pub follow_up_weight: Option<Spanned<f64>>,
    #[serde(default)]
    pub decay: Option<Spanned<f64>>,
}

/// `state:`: where limits, budgets and shared health live.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawState {
    #[serde(default)]
    pub redis: Option<Spanned<String>>,
    #[serde(default)]
    pub prefix: Option<Spanned<String>>,
    #[serde(default)]
    pub on_error: Option<Spanned<String>>,
    #[serde(default)]
    pub timeout_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub reservation_ttl_s: Option<Spanned<i64>>,
}

/// `auth:`: the client keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    #[serde(default)]
    pub required: Option<bool>,
    #[serde(default)]
    pub keys: Vec<RawClientKey>,
    /// The environment variable holding the key that opens `/admin/*` off loopback.
    #[serde(default)]
    pub admin_key_env: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClientKey {
    pub name: Spanned<String>,
    #[serde(default)]
    pub key_env: Option<Spanned<String>>,
    #[serde(default)]
    pub key_sha256: Option<Spanned<String>>,
    #[serde(default)]
    pub routes: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub backends: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub max_data_class: Option<Spanned<String>>,
    #[serde(default)]
    pub limits: Option<RawLimits>,
    #[serde(default)]
    pub admin: Option<bool>,
}

/// Rates and budgets, each optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    #[serde(default)]
    pub rpm: Option<Spanned<i64>>,
    #[serde(default)]
    pub tpm: Option<Spanned<i64>>,
    #[serde(default)]
    pub usd_per_day: Option<Spanned<f64>>,
    #[serde(default)]
    pub usd_per_month: Option<Spanned<f64>>,
}

/// The top-level `limits:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGlobalLimits {
    #[serde(default)]
    pub per_user: Option<RawLimits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEncoder {
    #[serde(default)]
    pub model: Option<Spanned<String>>,
    #[serde(default)]
    pub revision: Option<Spanned<String>>,
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    #[serde(default)]
    pub device: Option<Spanned<String>>,
    #[serde(default)]
    pub max_tokens: Option<Spanned<i64>>,
    #[serde(default)]
    pub precision: Option<Spanned<String>>,
    #[serde(default)]
    pub threads: Option<Spanned<i64>>,
}

/// `aggregation: max`, `aggregation: mean` or `aggregation: {top_mean: 3}`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum RawAggregation {
    Max,
    Mean,
    TopMean(i64),
    CentroidMix(f64),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub name: Spanned<String>,
    #[serde(default)]
    pub utterances: Vec<Spanned<String>>,
    #[serde(default)]
    pub keywords: Vec<Spanned<String>>,
    #[serde(default)]
    pub patterns: Vec<Spanned<String>>,
    #[serde(default)]
    pub threshold: Option<Spanned<f64>>,
    #[serde(default)]
    pub targets: Vec<Spanned<String>>,
    #[serde(default)]
    pub strategy: Option<Spanned<String>>,
    #[serde(default)]
    pub data_class: Option<Spanned<String>>,
    #[serde(default)]
    pub experiment: Option<super::experiment::RawExperiment>,
    #[serde(default)]
    pub escalate_on: Vec<Spanned<String>>,
    #[serde(default)]
    pub max_escalations: Option<Spanned<i64>>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    pub name: Spanned<String>,
    pub url: Spanned<String>,
    #[serde(default)]
    pub model: Option<Spanned<String>>,
    #[serde(default)]
    pub api_key_env: Option<Spanned<String>>,
    #[serde(default)]
    pub timeout_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub connect_timeout_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub first_byte_timeout_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub stream_idle_timeout_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub max_retry_after_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub retries: Option<Spanned<i64>>,
    #[serde(default)]
    pub max_concurrent: Option<Spanned<i64>>,
    #[serde(default)]
    pub weight: Option<Spanned<i64>>,
    #[serde(default)]
    pub cost: Option<RawCost>,
    #[serde(default)]
    pub data_classes: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub health_check_interval_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub upstream_stream: Option<bool>,
    #[serde(default)]
    pub max_stream_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub limits: Option<RawLimits>,
    #[serde(default)]
    pub context_window: Option<Spanned<i64>>,
    #[serde(default)]
    pub max_output_tokens: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCost {
    #[serde(default)]
    pub input_per_mtok: f64,
    #[serde(default)]
    pub output_per_mtok: f64,
}
