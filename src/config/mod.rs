//! `routes.yaml`: parsed raw (see `raw.rs`, `parse.rs`), then validated once into types that
//! cannot be invalid. Every check on the config lives in this module, one file per section;
//! the router and the handlers never re-check. This file holds the validated `Config` and
//! the one pass (`Checker`) that builds it.

mod backends;
mod cache;
mod classes;
mod conversation;
mod dispatch;
mod edits;
mod error;
mod experiment;
mod keys;
mod parse;
mod raw;
mod route_rules;
mod routes;
pub mod rules;
mod settings;
mod tenants;
mod types;
mod write;

pub use backends::{Backend, BackendId, Cost};
pub use cache::{CacheConfig, CacheStore, ExactCache, SemanticCache};
pub use classes::{Accepted, DataClasses};
pub use conversation::{ConversationConfig, ConversationMode};
pub use dispatch::{Dispatch, Escalation, Strategy};
pub use edits::{EditError, MAX_EDITED_UTTERANCES, RouteEdit};
pub use error::{ConfigError, ConfigIssue};
pub use experiment::{Experiment, StickyBy, Variant};
pub use keys::{
    AdminKey, Auth, ClientKey, KeySource, MIN_KEY_LEN, NO_KEY, RouteAccess, key_digest,
};
pub use route_rules::{RuleSource, Rules};
pub use rules::RuleSet;
pub use tenants::{Limits, OnError, StateConfig};
pub use types::{
    Aggregation, DeviceChoice, EncoderConfig, Keyword, Pattern, Precision, Route, RouteId,
    RouteName, Threshold,
};
pub use write::WriteError;

use parse::parse_raw;
use raw::RawConfig;
use serde_saphyr::Location;
use std::path::Path;

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
    /// How a chat's earlier turns weigh in on its route.
    pub conversation: ConversationConfig,
    /// Where counters, budgets and shared health live.
    pub state: StateConfig,
    /// Client keys and what each may reach.
    pub auth: Auth,
    /// Limits on each user (the request's `user` or `x-semroute-user`) of each key.
    pub per_user: Limits,
    /// Whether the decision log carries prompts and the last decisions are kept in memory
    /// with theirs (off: no prompt text is logged or kept).
    pub log_prompts: bool,
    /// The answer cache (`None`: answers are not cached).
    pub cache: Option<CacheConfig>,
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
        &self.backends[id.index()]
    }

    pub fn backend_id(&self, name: &str) -> Option<BackendId> {
        self.backends
            .iter()
            .position(|b| b.name == name)
            .map(BackendId::new)
    }

    /// Every backend's id, in file order.
    pub fn backend_ids(&self) -> impl ExactSizeIterator<Item = BackendId> + use<> {
        (0..self.backends.len()).map(BackendId::new)
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
        let conversation = self.conversation(raw.conversation);
        let state = self.state(raw.state);
        let cache = self.cache(raw.cache, state.as_ref());
        let per_user = self.per_user(raw.limits.as_ref());
        let auth = match (&routes, &backends) {
            (Some(routes), Some(backends)) => self.auth(raw.auth, routes, backends, &data_classes),
            _ => None,
        };
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
            conversation: conversation?,
            state: state?,
            auth: auth?,
            per_user: per_user?,
            log_prompts: raw.log_prompts.unwrap_or(false),
            cache: cache?,
            overrides,
            class_patterns,
            notes: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests;
