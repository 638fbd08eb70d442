//! A validated config written back as `routes.yaml` (what `semroute fit` saves): every
//! setting spelled out, in the shape `raw.rs` reads, so the file loads to the same `Config`.
//! Comments of the original file are not carried over.

use super::{Aggregation, Config, DeviceChoice, Precision};
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
    routes: Vec<OutRoute<'a>>,
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
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    metadata: &'a BTreeMap<String, serde_json::Value>,
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
            },
            threshold: self.threshold.get(),
            top_k: self.top_k,
            aggregation: self.aggregation,
            default_route: self.default_route.map(|r| self.route(r).name.as_str()),
            ambiguity_margin: self.ambiguity_margin,
            head_weight: self.head_weight,
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
