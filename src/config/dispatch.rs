//! Each route's `targets`, `strategy` and `data_class`, resolved against the backends into
//! a `Dispatch`: known backends, each listed once, and one at least that accepts the
//! route's data class.

use super::Checker;
use super::backends::{Backend, BackendId};
use super::classes::DataClasses;
use super::raw::RawRoute;
use serde::Serialize;
use serde_saphyr::Spanned;

/// How a route picks among its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, utoipa::ToSchema)]
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
    /// The cheapest healthy target whose context window holds the request, then the rest by
    /// cost.
    Cheapest,
    /// Rendezvous (highest random weight) hashing of the user, or the client's address,
    /// over the healthy targets: a target going down moves only its own clients.
    Sticky,
}

/// A route's dispatch settings, resolved against the backends.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dispatch {
    pub targets: Vec<BackendId>,
    pub strategy: Strategy,
    pub data_class: Option<String>,
    /// Replaces the strategy's first pick with the client's variant.
    pub experiment: Option<super::Experiment>,
    /// Answers that move the request on to the next target.
    pub escalate_on: Vec<Escalation>,
    /// The most times one request moves on for a broken contract.
    pub max_escalations: usize,
}

/// An answer that breaks its request's contract, and so moves it to the next target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Escalation {
    /// With `response_format: {type: json_schema}`: content that is not JSON or breaks the
    /// schema.
    InvalidJsonSchema,
}

impl Escalation {
    pub fn label(self) -> &'static str {
        match self {
            Escalation::InvalidJsonSchema => "invalid_json_schema",
        }
    }
}

/// Escalations per request unless `max_escalations` says otherwise, and the most it may.
const DEFAULT_MAX_ESCALATIONS: usize = 1;
const MAX_ESCALATIONS: i64 = 10;

impl Checker<'_> {
    /// A route's targets, strategy and data class, resolved against `backends` (`None`
    /// when they are invalid: then only what does not depend on them is checked).
    pub(super) fn dispatch(
        &mut self,
        at: &str,
        raw: &RawRoute,
        backends: Option<&[Backend]>,
        classes: &DataClasses,
    ) -> Option<Dispatch> {
        let targets = self.targets(at, raw, backends);
        let strategy = self.strategy(at, raw.strategy.as_ref());
        let data_class = match &raw.data_class {
            Some(class) => self
                .known_class(format!("{at}.data_class"), class, classes)
                .map(Some),
            None => Some(None),
        };
        let mut dispatch = Dispatch {
            targets: targets?,
            strategy: strategy?,
            data_class: data_class?,
            experiment: None,
            escalate_on: self.escalate_on(at, &raw.escalate_on)?,
            max_escalations: match &raw.max_escalations {
                Some(m) => self.bounded(&format!("{at}.max_escalations"), m, 1, MAX_ESCALATIONS)?,
                None => DEFAULT_MAX_ESCALATIONS,
            },
        };
        dispatch.experiment = self.experiment(at, raw.experiment.as_ref(), &dispatch, backends)?;
        let backends = backends.unwrap_or(&[]);
        self.class_is_accepted(at, raw, &dispatch, backends)
            .then_some(dispatch)
    }

    /// The backends the route sends to, in fallback order, each known and listed once
    /// (none when the backends themselves are invalid: there is nothing to check against).
    fn targets(
        &mut self,
        at: &str,
        raw: &RawRoute,
        backends: Option<&[Backend]>,
    ) -> Option<Vec<BackendId>> {
        let Some(backends) = backends else {
            return Some(Vec::new());
        };
        let mut valid = true;
        let mut targets = Vec::with_capacity(raw.targets.len());
        for (j, target) in raw.targets.iter().enumerate() {
            match backends.iter().position(|b| b.name == target.value) {
                Some(i) if targets.contains(&BackendId::new(i)) => {
                    self.issue(
                        format!("{at}.targets[{j}]"),
                        target.referenced,
                        format!("backend `{}` is listed twice", target.value),
                        "list each backend once, in fallback order",
                    );
                    valid = false;
                }
                Some(i) => targets.push(BackendId::new(i)),
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
        valid.then_some(targets)
    }

    fn escalate_on(&mut self, at: &str, raw: &[Spanned<String>]) -> Option<Vec<Escalation>> {
        let mut out = Vec::with_capacity(raw.len());
        for (i, reason) in raw.iter().enumerate() {
            match reason.value.trim() {
                "invalid_json_schema" => out.push(Escalation::InvalidJsonSchema),
                other => {
                    self.issue(
                        format!("{at}.escalate_on[{i}]"),
                        reason.referenced,
                        format!("unknown escalation `{other}`"),
                        "use invalid_json_schema",
                    );
                    return None;
                }
            }
        }
        out.dedup();
        Some(out)
    }

    fn strategy(&mut self, at: &str, raw: Option<&Spanned<String>>) -> Option<Strategy> {
        let Some(s) = raw else {
            return Some(Strategy::default());
        };
        match s.value.trim() {
            "fallback" => Some(Strategy::Fallback),
            "round_robin" => Some(Strategy::RoundRobin),
            "least_busy" => Some(Strategy::LeastBusy),
            "latency" => Some(Strategy::Latency),
            "cheapest" => Some(Strategy::Cheapest),
            "sticky" => Some(Strategy::Sticky),
            other => {
                self.issue(
                    format!("{at}.strategy"),
                    s.referenced,
                    format!("unknown strategy `{other}`"),
                    "use fallback, round_robin, least_busy, latency, cheapest or sticky",
                );
                None
            }
        }
    }

    /// A route with a data class needs a target that accepts it (a route without targets
    /// has nothing to check).
    fn class_is_accepted(
        &mut self,
        at: &str,
        raw: &RawRoute,
        dispatch: &Dispatch,
        backends: &[Backend],
    ) -> bool {
        let (Some(class), Some(line)) = (&dispatch.data_class, raw.data_class.as_ref()) else {
            return true;
        };
        let targets = &dispatch.targets;
        let eligible = targets
            .iter()
            .any(|t| backends[t.index()].accepts(Some(class)));
        if !targets.is_empty() && !eligible {
            self.issue(
                format!("{at}.data_class"),
                line.referenced,
                format!("none of the route's targets accepts data class `{class}`"),
                "add the class to a target's `data_classes`, or add a target that accepts it",
            );
            return false;
        }
        true
    }
}
