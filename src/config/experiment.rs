//! A route's `experiment:`: weighted variants (backends among its targets) with shares that
//! sum to 1, and what keeps a client on its variant (`sticky: user | ip | none`).

use super::Checker;
use super::backends::{Backend, BackendId};
use super::dispatch::Dispatch;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;
use std::collections::BTreeMap;

/// How far the shares' sum may be from 1 (they are written as decimals).
const SHARE_TOLERANCE: f64 = 1e-6;
/// Longest experiment name (it names Redis keys and metric labels).
const MAX_NAME: usize = 128;

/// The YAML shape of `experiment:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExperiment {
    pub name: Spanned<String>,
    pub variants: Spanned<BTreeMap<String, Spanned<f64>>>,
    #[serde(default)]
    pub sticky: Option<Spanned<String>>,
}

/// What keeps a client on one variant (and, for `strategy: sticky`, on one target).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StickyBy {
    /// The request's `user` (or `x-semroute-user`); the client's address without one.
    #[default]
    User,
    /// The client's address (the peer of the connection; a proxy's `X-Forwarded-For` is
    /// not trusted, since any client can write it).
    Ip,
    /// Drawn at random for each request.
    None,
}

/// One variant: a backend and the share of clients assigned to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Variant {
    pub backend: BackendId,
    pub share: f64,
}

/// A route's experiment, validated: at least two variants, each a target of the route,
/// in the targets' order, shares in (0, 1] summing to 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    pub name: String,
    pub variants: Vec<Variant>,
    pub sticky: StickyBy,
}

impl Checker<'_> {
    /// The route's experiment (`Some(None)`: none), checked against its resolved targets.
    pub(super) fn experiment(
        &mut self,
        at: &str,
        raw: Option<&RawExperiment>,
        dispatch: &Dispatch,
        backends: Option<&[Backend]>,
    ) -> Option<Option<Experiment>> {
        let Some(raw) = raw else {
            return Some(None);
        };
        let at = format!("{at}.experiment");
        let name = self.experiment_name(&at, &raw.name);
        let sticky = self.sticky_by(&at, raw.sticky.as_ref());
        let variants = match backends {
            Some(backends) if !backends.is_empty() => {
                self.variants(&at, &raw.variants, dispatch, backends)
            }
            // Invalid backends are reported on their own; with none there is nothing to try.
            Some(_) => {
                self.issue(
                    format!("{at}.variants"),
                    raw.variants.referenced,
                    "an experiment needs backends to send to, and the config defines none".into(),
                    "define the variants under `backends:` and list them in the route's `targets`",
                );
                None
            }
            None => Some(Vec::new()),
        };
        Some(Some(Experiment {
            name: name?,
            variants: variants?,
            sticky: sticky?,
        }))
    }

    fn experiment_name(&mut self, at: &str, raw: &Spanned<String>) -> Option<String> {
        let name = raw.value.trim();
        let plain = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if name.is_empty() || name.len() > MAX_NAME || !plain {
            self.issue(
                format!("{at}.name"),
                raw.referenced,
                format!("experiment name `{name}` is empty, too long or has other characters than letters, digits, `-`, `_` and `.`"),
                "name it like `support-small-vs-big` (at most 128 characters)",
            );
            return None;
        }
        Some(name.to_string())
    }

    fn sticky_by(&mut self, at: &str, raw: Option<&Spanned<String>>) -> Option<StickyBy> {
        let Some(raw) = raw else {
            return Some(StickyBy::default());
        };
        match raw.value.trim() {
            "user" => Some(StickyBy::User),
            "ip" => Some(StickyBy::Ip),
            "none" => Some(StickyBy::None),
            other => {
                self.issue(
                    format!("{at}.sticky"),
                    raw.referenced,
                    format!("unknown sticky `{other}`"),
                    "use user, ip or none",
                );
                None
            }
        }
    }

    /// The variants in the route's target order, each a target, shares summing to 1.
    fn variants(
        &mut self,
        at: &str,
        raw: &Spanned<BTreeMap<String, Spanned<f64>>>,
        dispatch: &Dispatch,
        backends: &[Backend],
    ) -> Option<Vec<Variant>> {
        let mut valid = true;
        let mut variants = Vec::with_capacity(raw.value.len());
        for (name, share) in &raw.value {
            let path = format!("{at}.variants.{name}");
            let target = dispatch
                .targets
                .iter()
                .copied()
                .find(|t| backends.get(t.index()).is_some_and(|b| &b.name == name));
            let Some(backend) = target else {
                self.issue(
                    path,
                    share.referenced,
                    format!("variant `{name}` is not one of the route's targets"),
                    "a variant is a backend the route already sends to: add it to `targets`",
                );
                valid = false;
                continue;
            };
            if !(share.value.is_finite() && share.value > 0.0 && share.value <= 1.0) {
                self.issue(
                    path,
                    share.referenced,
                    format!("share {} is not in (0, 1]", share.value),
                    "write each variant's share of clients, such as 0.9 and 0.1",
                );
                valid = false;
                continue;
            }
            variants.push(Variant {
                backend,
                share: share.value,
            });
        }
        if !valid {
            return None;
        }
        if variants.len() < 2 {
            self.issue(
                format!("{at}.variants"),
                raw.referenced,
                "an experiment needs at least two variants".into(),
                "list two or more of the route's targets with their shares",
            );
            return None;
        }
        let sum: f64 = variants.iter().map(|v| v.share).sum();
        if (sum - 1.0).abs() > SHARE_TOLERANCE {
            self.issue(
                format!("{at}.variants"),
                raw.referenced,
                format!("the shares sum to {sum}, not 1"),
                "make the variants' shares add up to exactly 1",
            );
            return None;
        }
        let position = |b: BackendId| dispatch.targets.iter().position(|&t| t == b);
        variants.sort_by_key(|v| position(v.backend));
        Some(variants)
    }
}
