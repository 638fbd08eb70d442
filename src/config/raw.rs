//! The YAML shape of `routes.yaml`, exactly as written: unknown keys are refused and every
//! value keeps the line it came from, so validation (in `config/mod.rs`) can point at it.

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
    pub routes: Spanned<Vec<RawRoute>>,
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
    pub description: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
}
