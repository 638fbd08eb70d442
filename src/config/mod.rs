//! `routes.yaml`: parsed raw (see `raw.rs`), then validated once into types that cannot be
//! invalid. Every check on the config lives here; the router and the handlers never re-check.

mod backends;
mod classes;
mod error;
mod raw;
pub mod rules;
mod types;
mod write;

pub use backends::{Backend, BackendId, Cost, Dispatch, Strategy};
pub use classes::{Accepted, DataClasses};
pub use error::{ConfigError, ConfigIssue};
pub use rules::RuleSet;
pub use types::{
    Aggregation, DeviceChoice, EncoderConfig, Keyword, Pattern, Precision, Route, RouteId,
    RouteName, Threshold,
};
pub use write::WriteError;

use raw::{RawAggregation, RawConfig, RawEncoder, RawRoute};
use serde_saphyr::{Location, Spanned};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The model used when `encoder.model` is not given.
pub const DEFAULT_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";
/// all-MiniLM-L6-v2's sentence-transformers `max_seq_length`.
pub const DEFAULT_MAX_TOKENS: usize = 256;
/// Cosine similarity a route's score must reach when neither it nor the file sets one.
pub const DEFAULT_THRESHOLD: f32 = 0.35;
/// Nearest utterances fetched from the index per query.
pub const DEFAULT_TOP_K: usize = 20;
/// Top two route scores closer than this make a classification `ambiguous`.
pub const DEFAULT_AMBIGUITY_MARGIN: f32 = 0.03;
/// The learned head's exponent when the file sets none (chosen on CLINC150 val).
pub const DEFAULT_HEAD_WEIGHT: f32 = 0.5;
/// Largest `head_weight` accepted: beyond it the head alone decides.
pub const MAX_HEAD_WEIGHT: f64 = 4.0;
/// Largest `top_k` accepted: beyond this a search is no longer cheap.
pub const MAX_TOP_K: usize = 1000;

/// A validated router configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the config came from, for messages (`routes.yaml`, `<inline>`).
    pub source: String,
    pub encoder: EncoderConfig,
    pub threshold: Threshold,
    pub top_k: usize,
    pub aggregation: Aggregation,
    pub default_route: Option<RouteId>,
    /// When the best two routes' scores differ by less, the answer says `ambiguous`.
    pub ambiguity_margin: f32,
    /// How strongly the learned head re-weights route scores: each score is multiplied by
    /// `(p / p_best)^head_weight` (0: no head is trained).
    pub head_weight: f32,
    /// The LLM endpoints routes dispatch to (none: classification only).
    pub backends: Vec<Backend>,
    pub routes: Vec<Route>,
    /// The data classes, least sensitive first.
    pub data_classes: DataClasses,
    /// Every route's keywords and patterns, compiled once (file order: per route, its
    /// keywords then its patterns).
    pub overrides: Rules,
    /// The patterns of routes that have a `data_class`: a match anywhere in a request gives
    /// it that class.
    pub class_patterns: Rules,
    /// Things that are valid but worth telling the user (printed by `validate`, logged by
    /// `serve`).
    pub notes: Vec<ConfigIssue>,
}

/// Route rules (keywords, patterns) compiled together, with where each came from.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub set: RuleSet,
    pub sources: Vec<RuleSource>,
}

/// One keyword or pattern of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSource {
    pub route: RouteId,
    /// A pattern (a regex as written), else a keyword.
    pub pattern: bool,
    /// The keyword or the pattern's source.
    pub text: String,
}

impl Rules {
    /// The sources of the rules that match `text`, in order.
    pub fn hits<'a>(&'a self, text: &str) -> impl Iterator<Item = &'a RuleSource> + 'a {
        self.set
            .matches(text)
            .into_iter()
            .filter_map(|i| self.sources.get(i))
    }
}

impl Config {
    /// Reads and validates a config file. Relative paths inside it (`encoder.path`) are
    /// resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Unreadable {
            file: path.display().to_string(),
            reason: err.to_string(),
        })?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Config::parse(&text, &path.display().to_string(), &base_dir)
    }

    /// Validates config text; `source` names it in errors, `base_dir` anchors relative paths.
    pub fn parse(text: &str, source: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let raw = parse_raw(text, source)?;
        let mut checker = Checker {
            source,
            issues: Vec::new(),
            notes: Vec::new(),
            rule_sites: Vec::new(),
        };
        let config = checker.config(raw, base_dir);
        match config {
            Some(mut config) if checker.issues.is_empty() => {
                config.notes = checker.notes;
                Ok(config)
            }
            _ => Err(ConfigError::Invalid {
                file: source.to_string(),
                issues: checker.issues,
            }),
        }
    }

    pub fn route(&self, id: RouteId) -> &Route {
        // RouteIds are only minted by validation, as indexes into `routes`.
        &self.routes[id.index()]
    }

    pub fn backend(&self, id: BackendId) -> &Backend {
        // BackendIds are only minted by validation, as indexes into `backends`.
        &self.backends[id.0]
    }

    pub fn backend_id(&self, name: &str) -> Option<BackendId> {
        self.backends
            .iter()
            .position(|b| b.name == name)
            .map(BackendId)
    }

    pub fn route_id(&self, name: &str) -> Option<RouteId> {
        self.routes
            .iter()
            .position(|route| route.name.as_str() == name)
            .map(RouteId::new)
    }

    /// Every route's id, in file order.
    pub fn route_ids(&self) -> impl ExactSizeIterator<Item = RouteId> + use<> {
        (0..self.routes.len()).map(RouteId::new)
    }

    /// The id of the route at `index` in `routes`, if there is one (for ids read back from
    /// a cache).
    pub fn route_at(&self, index: usize) -> Option<RouteId> {
        (index < self.routes.len()).then_some(RouteId::new(index))
    }

    /// The threshold a route's score must clear: its own, else the global one.
    pub fn threshold_for(&self, id: RouteId) -> Threshold {
        self.route(id).threshold.unwrap_or(self.threshold)
    }
}

fn parse_raw(text: &str, source: &str) -> Result<RawConfig, ConfigError> {
    if text.trim().is_empty() {
        return Err(ConfigError::Invalid {
            file: source.to_string(),
            issues: vec![ConfigIssue {
                path: String::new(),
                line: None,
                message: "the file is empty".into(),
                hint: Some(
                    "write at least `routes:` with one route that has a `name` and `utterances`"
                        .into(),
                ),
            }],
        });
    }
    let mut yaml_path = String::new();
    let parsed = serde_saphyr::with_deserializer_from_str(text, |de| {
        let result = serde_path_to_error::deserialize::<_, RawConfig>(de);
        result.map_err(|err| {
            // `Spanned` wraps values in a `value` field that the user never wrote.
            yaml_path = err.path().to_string().replace(".value", "");
            err.into_inner()
        })
    });
    parsed.map_err(|err| {
        let plain = err.without_snippet();
        let line = plain.location().map(|loc| loc.line()).filter(|&l| l > 0);
        let message = strip_location_suffix(&plain.to_string());
        ConfigError::Invalid {
            file: source.to_string(),
            issues: vec![ConfigIssue {
                path: if yaml_path == "." {
                    String::new()
                } else {
                    yaml_path
                },
                line,
                hint: hint_for_parse_error(&message),
                message,
            }],
        }
    })
}

/// serde-saphyr appends " at line N column M"; the issue carries the line separately.
fn strip_location_suffix(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message.to_string(),
    }
}

fn hint_for_parse_error(message: &str) -> Option<String> {
    if message.contains("unknown field") {
        Some(
            "remove the key or fix its spelling; the accepted keys are listed in the message"
                .into(),
        )
    } else if message.contains("missing field `routes`") {
        Some("add `routes:` with at least one route (`name` and `utterances`)".into())
    } else if message.contains("missing field `name`") {
        Some("give every route a `name:`".into())
    } else if message.contains("unknown variant") {
        Some("use one of the values listed in the message".into())
    } else {
        None
    }
}

/// Collects every problem in one pass, so a user fixes a file in one round, not ten.
struct Checker<'a> {
    source: &'a str,
    issues: Vec<ConfigIssue>,
    notes: Vec<ConfigIssue>,
    /// Where each keyword and pattern was written, in the order `Config::overrides` lists
    /// them.
    rule_sites: Vec<(String, Location)>,
}

impl Checker<'_> {
    fn issue(&mut self, path: String, at: Location, message: String, hint: &str) {
        self.issues.push(ConfigIssue {
            path,
            line: Some(at.line()).filter(|&l| l > 0),
            message,
            hint: (!hint.is_empty()).then(|| hint.to_string()),
        });
    }

    fn config(&mut self, raw: RawConfig, base_dir: &Path) -> Option<Config> {
        let encoder = self.encoder(raw.encoder, base_dir);
        let threshold = match raw.threshold {
            Some(t) => self.threshold("threshold", &t),
            None => Threshold::new(DEFAULT_THRESHOLD),
        };
        let top_k = match raw.top_k {
            Some(k) => self.bounded("top_k", &k, 1, MAX_TOP_K as i64),
            None => Some(DEFAULT_TOP_K),
        };
        let aggregation = match raw.aggregation {
            Some(agg) => self.aggregation(&agg),
            None => Some(Aggregation::default()),
        };
        let ambiguity_margin = match raw.ambiguity_margin {
            Some(m) => self.within(
                "ambiguity_margin",
                &m,
                2.0,
                "write a score difference such as 0.03 (0 turns the flag off)",
            ),
            None => Some(DEFAULT_AMBIGUITY_MARGIN),
        };
        let head_weight = match raw.head_weight {
            Some(w) => self.within(
                "head_weight",
                &w,
                MAX_HEAD_WEIGHT,
                "write an exponent such as 0.5 (0 turns the learned head off)",
            ),
            None => Some(DEFAULT_HEAD_WEIGHT),
        };
        let classes_in_use = raw.data_classes_order.is_some()
            || raw.backends.iter().any(|b| b.data_classes.is_some())
            || raw.routes.value.iter().any(|r| r.data_class.is_some());
        let data_classes = self.data_classes(raw.data_classes_order, classes_in_use)?;
        let backends = self.backends(raw.backends, &data_classes);
        let routes = self.routes(raw.routes, backends.as_deref(), &data_classes);
        let (overrides, class_patterns) = match &routes {
            Some(routes) => self.rules(routes)?,
            None => (Rules::default(), Rules::default()),
        };
        let default_route = match (&raw.default_route, &routes) {
            (Some(name), Some(routes)) => self.default_route(name, routes),
            _ => Some(None),
        };
        if let Some(routes) = &routes {
            self.routes_have_examples(routes, default_route.flatten());
        }
        Some(Config {
            source: self.source.to_string(),
            encoder: encoder?,
            threshold: threshold?,
            top_k: top_k?,
            aggregation: aggregation?,
            default_route: default_route?,
            ambiguity_margin: ambiguity_margin?,
            head_weight: head_weight?,
            backends: backends?,
            routes: routes?,
            data_classes,
            overrides,
            class_patterns,
            notes: Vec::new(),
        })
    }

    /// Compiles the routes' keywords and patterns as `serve` runs them: all of them
    /// together, and the patterns of classed routes together.
    fn rules(&mut self, routes: &[Route]) -> Option<(Rules, Rules)> {
        let mut all = Rules::default();
        let mut regexes = Vec::new();
        let mut classed = Vec::new();
        for (r, route) in routes.iter().enumerate() {
            for keyword in &route.keywords {
                regexes.push(keyword.regex_source().to_string());
                all.sources.push(RuleSource {
                    route: RouteId::new(r),
                    pattern: false,
                    text: keyword.as_str().to_string(),
                });
            }
            for pattern in &route.patterns {
                if route.dispatch.data_class.is_some() {
                    classed.push(all.sources.len());
                }
                regexes.push(pattern.as_str().to_string());
                all.sources.push(RuleSource {
                    route: RouteId::new(r),
                    pattern: true,
                    text: pattern.as_str().to_string(),
                });
            }
        }
        all.set = match RuleSet::new(&regexes) {
            Ok(set) => set,
            Err(err) => {
                self.rule_failed(err.index, &err.reason);
                return None;
            }
        };
        let class_regexes: Vec<String> = classed.iter().map(|&i| regexes[i].clone()).collect();
        let class_patterns = match RuleSet::new(&class_regexes) {
            Ok(set) => Rules {
                set,
                sources: classed.iter().map(|&i| all.sources[i].clone()).collect(),
            },
            Err(err) => {
                self.rule_failed(classed.get(err.index).copied().unwrap_or(0), &err.reason);
                return None;
            }
        };
        Some((all, class_patterns))
    }

    fn rule_failed(&mut self, site: usize, reason: &str) {
        let (path, at) = self
            .rule_sites
            .get(site)
            .cloned()
            .unwrap_or_else(|| ("routes".to_string(), Location::UNKNOWN));
        self.issue(
            path,
            at,
            format!("the routes' keywords and patterns cannot be compiled together from this one on: {reason}"),
            "simplify this pattern (bounded repetitions such as {1000} and large Unicode classes such as \\w make it big), or split the routes",
        );
    }

    /// A number in `[0, max]`.
    fn within(&mut self, path: &str, raw: &Spanned<f64>, max: f64, hint: &str) -> Option<f32> {
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

    fn encoder(&mut self, raw: Option<RawEncoder>, base_dir: &Path) -> Option<EncoderConfig> {
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
                other => self.issue(
                    "encoder.precision".into(),
                    precision.referenced,
                    format!("unknown precision `{other}`"),
                    "write f32 (the default) or bf16",
                ),
            }
        }
        if let Some(max) = raw.max_tokens {
            config.max_tokens = self.bounded("encoder.max_tokens", &max, 2, 8192)?;
        }
        Some(config)
    }

    fn threshold(&mut self, path: &str, raw: &Spanned<f64>) -> Option<Threshold> {
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

    fn bounded(&mut self, path: &str, raw: &Spanned<i64>, min: i64, max: i64) -> Option<usize> {
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

    fn aggregation(&mut self, raw: &Spanned<RawAggregation>) -> Option<Aggregation> {
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

    fn routes(
        &mut self,
        raw: Spanned<Vec<RawRoute>>,
        backends: Option<&[Backend]>,
        classes: &DataClasses,
    ) -> Option<Vec<Route>> {
        if raw.value.is_empty() {
            self.issue(
                "routes".into(),
                raw.referenced,
                "there are no routes".into(),
                "add at least one route with a `name` and `utterances`",
            );
            return None;
        }
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut routes = Vec::with_capacity(raw.value.len());
        let mut all_valid = true;
        for (i, raw_route) in raw.value.into_iter().enumerate() {
            let at = format!("routes[{i}]");
            let name = &raw_route.name;
            if let Some(first_line) = seen.get(&name.value) {
                self.issue(
                    format!("{at}.name"),
                    name.referenced,
                    format!(
                        "route name `{}` is already used (line {first_line})",
                        name.value
                    ),
                    "give every route a unique name, or merge the two routes' utterances",
                );
                all_valid = false;
            } else {
                seen.insert(name.value.clone(), name.referenced.line());
            }
            match self.route(&at, raw_route, backends, classes) {
                Some(route) => routes.push(route),
                None => all_valid = false,
            }
        }
        all_valid.then_some(routes)
    }

    fn route(
        &mut self,
        at: &str,
        raw: RawRoute,
        backends: Option<&[Backend]>,
        classes: &DataClasses,
    ) -> Option<Route> {
        let name = RouteName::new(&raw.name.value);
        if name.is_none() {
            self.issue(
                format!("{at}.name"),
                raw.name.referenced,
                "the route name is empty".into(),
                "write a short name such as `billing` or `code`",
            );
        }
        let dispatch = self.dispatch(at, &raw, backends, classes);
        let mut valid = name.is_some() && dispatch.is_some();
        let mut utterances = Vec::with_capacity(raw.utterances.len());
        for (j, utterance) in raw.utterances.into_iter().enumerate() {
            if utterance.value.trim().is_empty() {
                self.issue(
                    format!("{at}.utterances[{j}]"),
                    utterance.referenced,
                    "the utterance is empty".into(),
                    "remove it, or write an example prompt this route should receive",
                );
                valid = false;
            }
            utterances.push(utterance.value);
        }
        let mut keywords = Vec::with_capacity(raw.keywords.len());
        for (j, keyword) in raw.keywords.iter().enumerate() {
            match Keyword::new(&keyword.value) {
                Some(k) => {
                    self.rule_sites
                        .push((format!("{at}.keywords[{j}]"), keyword.referenced));
                    keywords.push(k);
                }
                None => {
                    self.issue(
                        format!("{at}.keywords[{j}]"),
                        keyword.referenced,
                        "the keyword is empty".into(),
                        "remove it, or write a word or phrase that should select this route",
                    );
                    valid = false;
                }
            }
        }
        let mut patterns = Vec::with_capacity(raw.patterns.len());
        for (j, pattern) in raw.patterns.iter().enumerate() {
            match Pattern::new(&pattern.value) {
                Ok(p) => {
                    self.rule_sites
                        .push((format!("{at}.patterns[{j}]"), pattern.referenced));
                    patterns.push(p);
                }
                Err(reason) => {
                    self.issue(
                        format!("{at}.patterns[{j}]"),
                        pattern.referenced,
                        format!("invalid regular expression: {reason}"),
                        "fix the regex (Rust `regex` syntax: no look-around or back-references); escape literal characters such as . ( ) [ ] with a backslash",
                    );
                    valid = false;
                }
            }
        }
        let threshold = match &raw.threshold {
            Some(t) => {
                let checked = self.threshold(&format!("{at}.threshold"), t);
                valid &= checked.is_some();
                checked
            }
            None => None,
        };
        Some(Route {
            name: name?,
            line: raw.name.referenced.line(),
            utterances,
            keywords,
            patterns,
            threshold,
            dispatch: dispatch?,
            description: raw.description,
            metadata: raw.metadata,
        })
        .filter(|_| valid)
    }

    fn default_route(
        &mut self,
        name: &Spanned<String>,
        routes: &[Route],
    ) -> Option<Option<RouteId>> {
        if let Some(i) = routes.iter().position(|r| r.name.as_str() == name.value) {
            return Some(Some(RouteId::new(i)));
        }
        let known: Vec<&str> = routes.iter().take(12).map(|r| r.name.as_str()).collect();
        let more = if routes.len() > known.len() {
            ", ..."
        } else {
            ""
        };
        self.issue(
            "default_route".into(),
            name.referenced,
            format!("`{}` names no route", name.value),
            &format!(
                "write the name of one of the routes ({}{more}), or remove `default_route`",
                known.join(", ")
            ),
        );
        None
    }

    /// Every route but the default needs something to match on.
    fn routes_have_examples(&mut self, routes: &[Route], default: Option<RouteId>) {
        for (i, route) in routes.iter().enumerate() {
            let empty = route.utterances.is_empty()
                && route.keywords.is_empty()
                && route.patterns.is_empty();
            if empty && default != Some(RouteId::new(i)) {
                self.issues.push(ConfigIssue {
                    path: format!("routes[{i}]"),
                    line: Some(route.line).filter(|&l| l > 0),
                    message: format!(
                        "route `{}` has no utterances, keywords or patterns, so nothing can select it",
                        route.name
                    ),
                    hint: Some(
                        "add `utterances:` with example prompts (or `keywords:`/`patterns:`), or make it the `default_route`"
                            .into(),
                    ),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
