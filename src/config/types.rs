//! The validated config's value types; each can only hold a valid value.

use regex::Regex;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// A cosine similarity in [-1, 1] that a route's score must reach.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize)]
#[serde(transparent)]
pub struct Threshold(f32);

impl Threshold {
    pub fn new(value: f32) -> Option<Threshold> {
        (value.is_finite() && (-1.0..=1.0).contains(&value)).then_some(Threshold(value))
    }

    /// `value` clamped into range (NaN: 1, which nothing but a perfect match clears).
    pub fn saturating(value: f32) -> Threshold {
        Threshold(if value.is_nan() {
            1.0
        } else {
            value.clamp(-1.0, 1.0)
        })
    }

    pub fn get(self) -> f32 {
        self.0
    }
}

/// A route's name: never empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct RouteName(String);

impl RouteName {
    pub fn new(name: &str) -> Option<RouteName> {
        (!name.trim().is_empty()).then(|| RouteName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RouteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A route's position in `Config::routes`. Only validation mints them (the field and the
/// constructor are private to `config`), so an id always names a route of its config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteId(usize);

impl RouteId {
    pub(in crate::config) fn new(index: usize) -> RouteId {
        RouteId(index)
    }

    /// The route's position in `Config::routes`.
    pub fn index(self) -> usize {
        self.0
    }

    /// An id for unit tests that need routes without a config.
    #[cfg(test)]
    pub(crate) const fn at(index: usize) -> RouteId {
        RouteId(index)
    }
}

/// A case-insensitive word or phrase that selects its route when it appears as a whole word.
#[derive(Debug, Clone)]
pub struct Keyword {
    text: String,
    /// The matcher's source; compiled once, with every other rule, into the config's
    /// `RuleSet` (never alone).
    source: String,
}

impl Keyword {
    /// Builds the matcher: words must stand alone (`bill` does not match `billing`), the
    /// words of a phrase may be separated by any whitespace, and a keyword that starts or
    /// ends with a symbol (`c++`, `.env`) needs no word boundary on that side.
    pub fn new(text: &str) -> Option<Keyword> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let first = words.first()?.chars().next()?;
        let last = words.last()?.chars().last()?;
        let body = words
            .iter()
            .map(|w| regex::escape(w))
            .collect::<Vec<_>>()
            .join(r"\s+");
        let start = if is_word_char(first) { r"\b" } else { "" };
        let end = if is_word_char(last) { r"\b" } else { "" };
        Some(Keyword {
            text: words.join(" "),
            source: format!("(?i){start}{body}{end}"),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The regex source, for building one combined matcher over all keywords.
    pub fn regex_source(&self) -> &str {
        &self.source
    }
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// A user regex that selects its route when it matches anywhere in the prompt.
#[derive(Debug, Clone)]
pub struct Pattern {
    regex: Regex,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, String> {
        if source.is_empty() {
            return Err("the pattern is empty and would match every prompt".into());
        }
        Regex::new(source)
            .map(|regex| Pattern { regex })
            .map_err(|err| {
                let text = err.to_string();
                let last = text.lines().last().unwrap_or("").trim();
                last.strip_prefix("error: ").unwrap_or(last).to_string()
            })
    }

    pub fn as_str(&self) -> &str {
        self.regex.as_str()
    }
}

/// How a route's score is formed from the similarities of its retrieved utterances.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// The best single neighbour.
    Max,
    /// The mean of all of the route's retrieved neighbours.
    Mean,
    /// The mean of the route's `n` best neighbours; neighbours it is missing from the
    /// retrieved set count as the weakest similarity retrieved (an upper bound for them).
    TopMean(usize),
    /// `w · cos(prompt, route centroid) + (1 − w) · top_mean(3)`: the route's prototype
    /// (the normalised mean of its utterances) mixed with its best neighbours.
    CentroidMix(f32),
}

impl Default for Aggregation {
    /// Chosen on CLINC150's validation split: in-scope top-1 88.7% against 86.1% for
    /// `TopMean(3)` and 83.1% for `Max`.
    fn default() -> Self {
        Aggregation::CentroidMix(0.7)
    }
}

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChoice {
    #[default]
    Cpu,
    Cuda(usize),
    Metal,
    /// An accelerator when the binary was built with one and it is present, else the CPU.
    Auto,
}

impl DeviceChoice {
    pub fn parse(text: &str) -> Option<DeviceChoice> {
        match text.trim().to_ascii_lowercase().as_str() {
            "cpu" => Some(DeviceChoice::Cpu),
            "cuda" => Some(DeviceChoice::Cuda(0)),
            "metal" => Some(DeviceChoice::Metal),
            "auto" => Some(DeviceChoice::Auto),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda),
        }
    }
}

/// Number format of the weights in the native CPU encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// float32, bit-for-bit the reference model's format.
    #[default]
    F32,
    /// bfloat16 weights and activations with float32 accumulation (AVX512_BF16 CPUs):
    /// about twice as fast; embeddings within cosine 0.999 of float32.
    Bf16,
    /// int8 weights (per output channel) and activations (per token) with i32
    /// accumulation (AVX2, AVX-VNNI or AVX512-VNNI CPUs).
    Int8,
}

/// The embedding model and where it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderConfig {
    /// Hugging Face model id, used to find the model locally and to download it.
    pub model: String,
    pub revision: String,
    /// A directory holding config.json, tokenizer.json and model.safetensors.
    pub path: Option<PathBuf>,
    pub device: DeviceChoice,
    /// Prompts are truncated to this many tokens, special tokens included.
    pub max_tokens: usize,
    pub precision: Precision,
    /// Threads the CPU encoder runs on; `None`: the cores available to the process.
    pub threads: Option<usize>,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        EncoderConfig {
            model: super::DEFAULT_MODEL.to_string(),
            revision: "main".to_string(),
            path: None,
            device: DeviceChoice::default(),
            max_tokens: super::DEFAULT_MAX_TOKENS,
            precision: Precision::default(),
            threads: None,
        }
    }
}

/// One route: a destination for prompts, with what selects it.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: RouteName,
    /// The line of its `name:` in the file (0 when not from a file).
    pub line: u64,
    pub utterances: Vec<String>,
    pub keywords: Vec<Keyword>,
    pub patterns: Vec<Pattern>,
    pub threshold: Option<Threshold>,
    /// Where its requests go (empty targets when the config has no backends).
    pub dispatch: super::Dispatch,
    pub description: Option<String>,
    pub metadata: BTreeMap<String, serde_json::Value>,
}
