//! The settings that are one value each: the top-level numbers (`threshold`, `top_k`,
//! `aggregation`, ...), the `encoder:` section, and the range checks every section's
//! numbers go through.

use super::raw::{RawAggregation, RawEncoder};
use super::{Aggregation, Checker, DeviceChoice, EncoderConfig, MAX_TOP_K, Precision, Threshold};
use serde_saphyr::Spanned;
use std::path::{Path, PathBuf};

impl Checker<'_> {
    /// A number in `[0, max]`.
    pub(super) fn within(
        &mut self,
        path: &str,
        raw: &Spanned<f64>,
        max: f64,
        hint: &str,
    ) -> Option<f32> {
        if (0.0..=max).contains(&raw.value) {
            return Some(raw.value as f32);
        }
        self.issue(
            path.into(),
            raw.referenced,
            format!("{} is outside [0, {max}]", raw.value),
            hint,
        );
        None
    }

    pub(super) fn encoder(
        &mut self,
        raw: Option<RawEncoder>,
        base_dir: &Path,
    ) -> Option<EncoderConfig> {
        let Some(raw) = raw else {
            return Some(EncoderConfig::default());
        };
        let mut config = EncoderConfig::default();
        if let Some(model) = raw.model {
            if model.value.trim().is_empty() || !model.value.contains('/') {
                self.issue(
                    "encoder.model".into(),
                    model.referenced,
                    format!("`{}` is not a Hugging Face model id", model.value),
                    "write an id of the form owner/name, e.g. sentence-transformers/all-MiniLM-L6-v2",
                );
            }
            config.model = model.value;
        }
        if let Some(revision) = raw.revision {
            config.revision = revision.value;
        }
        if let Some(path) = raw.path {
            let p = PathBuf::from(&path.value);
            config.path = Some(if p.is_absolute() { p } else { base_dir.join(p) });
        }
        if let Some(device) = raw.device {
            match DeviceChoice::parse(&device.value) {
                Some(choice) => config.device = choice,
                None => self.issue(
                    "encoder.device".into(),
                    device.referenced,
                    format!("unknown device `{}`", device.value),
                    "write one of: cpu, cuda, cuda:N, metal, auto",
                ),
            }
        }
        if let Some(precision) = raw.precision {
            match precision.value.trim().to_ascii_lowercase().as_str() {
                "f32" | "float32" => config.precision = Precision::F32,
                "bf16" | "bfloat16" => config.precision = Precision::Bf16,
                "int8" | "i8" => config.precision = Precision::Int8,
                other => self.issue(
                    "encoder.precision".into(),
                    precision.referenced,
                    format!("unknown precision `{other}`"),
                    "write f32 (the default), bf16 or int8",
                ),
            }
        }
        if let Some(threads) = raw.threads {
            config.threads = Some(self.bounded("encoder.threads", &threads, 1, 1024)?);
        }
        if let Some(max) = raw.max_tokens {
            config.max_tokens = self.bounded("encoder.max_tokens", &max, 2, 8192)?;
        }
        Some(config)
    }

    pub(super) fn threshold(&mut self, path: &str, raw: &Spanned<f64>) -> Option<Threshold> {
        let threshold = Threshold::new(raw.value as f32);
        if threshold.is_none() {
            self.issue(
                path.into(),
                raw.referenced,
                format!("threshold {} is outside [-1, 1]", raw.value),
                "a threshold is a cosine similarity: write a number between -1 and 1, typically 0.3 to 0.7",
            );
        }
        threshold
    }

    pub(super) fn bounded(
        &mut self,
        path: &str,
        raw: &Spanned<i64>,
        min: i64,
        max: i64,
    ) -> Option<usize> {
        if raw.value < min || raw.value > max {
            self.issue(
                path.into(),
                raw.referenced,
                format!("{} is outside the accepted range {min}..={max}", raw.value),
                &format!("write a whole number from {min} to {max}"),
            );
            return None;
        }
        usize::try_from(raw.value).ok()
    }

    pub(super) fn aggregation(&mut self, raw: &Spanned<RawAggregation>) -> Option<Aggregation> {
        match raw.value {
            RawAggregation::Max => Some(Aggregation::Max),
            RawAggregation::Mean => Some(Aggregation::Mean),
            RawAggregation::TopMean(n) => {
                let n = self.bounded(
                    "aggregation.top_mean",
                    &Spanned::new(n, raw.referenced, raw.defined),
                    1,
                    MAX_TOP_K as i64,
                )?;
                Some(Aggregation::TopMean(n))
            }
            RawAggregation::CentroidMix(w) if (0.0..=1.0).contains(&w) => {
                Some(Aggregation::CentroidMix(w as f32))
            }
            RawAggregation::CentroidMix(w) => {
                self.issue(
                    "aggregation.centroid_mix".into(),
                    raw.referenced,
                    format!("the centroid weight {w} is outside [0, 1]"),
                    "write a weight between 0 and 1, e.g. {centroid_mix: 0.7}",
                );
                None
            }
        }
    }
}
