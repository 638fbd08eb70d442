//! The experiments' report (`GET /admin/experiments`): per variant its counts and means
//! with 95% intervals, and per metric each variant against the first (the control): the
//! test, whether the difference is significant, and how many more requests would tell.

use super::stats::{self, Sums, Test};
use super::store::{Counters, Store};
use crate::config::{Config, StickyBy};
use crate::quota::shared::StoreError;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ExperimentsReport {
    pub experiments: Vec<ExperimentReport>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ExperimentReport {
    pub name: String,
    pub route: String,
    pub sticky: StickyBy,
    /// In the route's target order; the first is the control.
    pub variants: Vec<VariantReport>,
    pub comparisons: Vec<Comparison>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VariantReport {
    pub backend: String,
    /// Its configured share of clients.
    pub share: f64,
    /// Requests assigned to it (answered by it or, when it failed, by a fallback).
    pub requests: u64,
    /// Of those, not answered with a 2xx.
    pub errors: u64,
    pub error_rate: Option<f64>,
    /// Of answered requests.
    pub latency_ms: Mean,
    pub ttfb_ms: Mean,
    /// Prompt and completion tokens per answered request that reported usage.
    pub tokens: Mean,
    pub cost_usd: Mean,
    /// Scores from `POST /v1/feedback`.
    pub feedback: Mean,
}

/// A mean with its 95% interval (`null`s until there are observations enough).
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct Mean {
    pub n: u64,
    pub mean: Option<f64>,
    pub ci95: Option<[f64; 2]>,
}

impl From<&Sums> for Mean {
    fn from(s: &Sums) -> Mean {
        Mean {
            n: s.n as u64,
            mean: s.mean(),
            ci95: s.interval().map(|(lo, hi)| [lo, hi]),
        }
    }
}

/// One metric of one variant against the control.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Comparison {
    /// `error_rate`, `latency_ms`, `ttfb_ms`, `tokens`, `cost_usd` or `feedback`.
    pub metric: &'static str,
    pub control: String,
    pub variant: String,
    /// `null` until each side has observations enough (two, for a mean).
    pub result: Option<Test>,
    /// Requests still needed on the side with fewer to tell a difference of the size seen
    /// (`null`: no difference seen, or no test yet; 0: enough already).
    pub more_requests_needed: Option<u64>,
}

/// The report of every experiment in `config`, from `store`'s counters.
pub async fn report(config: &Config, store: &Store) -> Result<ExperimentsReport, StoreError> {
    let mut experiments = Vec::new();
    for route in &config.routes {
        let Some(experiment) = route.dispatch.experiment.as_ref() else {
            continue;
        };
        let mut counted: Vec<(String, f64, Counters)> = Vec::new();
        for v in &experiment.variants {
            let name = config.backend(v.backend).name.clone();
            let counters = store.counters(&experiment.name, &name).await?;
            counted.push((name, v.share, counters));
        }
        experiments.push(ExperimentReport {
            name: experiment.name.clone(),
            route: route.name.to_string(),
            sticky: experiment.sticky,
            variants: counted.iter().map(variant_report).collect(),
            comparisons: comparisons(&counted),
        });
    }
    Ok(ExperimentsReport { experiments })
}

fn variant_report((backend, share, c): &(String, f64, Counters)) -> VariantReport {
    VariantReport {
        backend: backend.clone(),
        share: *share,
        requests: c.requests,
        errors: c.errors,
        error_rate: (c.requests > 0).then(|| c.errors as f64 / c.requests as f64),
        latency_ms: (&c.latency_ms).into(),
        ttfb_ms: (&c.ttfb_ms).into(),
        tokens: (&c.tokens).into(),
        cost_usd: (&c.cost_usd).into(),
        feedback: (&c.feedback).into(),
    }
}

type Metric = (&'static str, fn(&Counters) -> &Sums);

const MEANS: [Metric; 5] = [
    ("latency_ms", |c| &c.latency_ms),
    ("ttfb_ms", |c| &c.ttfb_ms),
    ("tokens", |c| &c.tokens),
    ("cost_usd", |c| &c.cost_usd),
    ("feedback", |c| &c.feedback),
];

/// Every variant after the first against the first, metric by metric.
fn comparisons(counted: &[(String, f64, Counters)]) -> Vec<Comparison> {
    let Some((control, _, base)) = counted.first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (variant, _, other) in &counted[1..] {
        let compare = |metric: &'static str, result: Option<Test>, have: f64| Comparison {
            metric,
            control: control.clone(),
            variant: variant.clone(),
            more_requests_needed: result
                .and_then(|t| t.needed_per_variant)
                .map(|needed| (needed - have).max(0.0) as u64),
            result,
        };
        let rates = stats::two_proportion(
            base.errors as f64,
            base.requests as f64,
            other.errors as f64,
            other.requests as f64,
        );
        let fewer = base.requests.min(other.requests) as f64;
        out.push(compare("error_rate", rates, fewer));
        for (metric, sums) in MEANS {
            let (a, b) = (sums(base), sums(other));
            out.push(compare(metric, stats::welch(a, b), a.n.min(b.n)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::store::{MemoryStore, Observation};

    /// Deterministic normal draws (Box-Muller over a 64-bit LCG).
    struct Draws(u64);

    impl Draws {
        fn unit(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }

        fn normal(&mut self, mean: f64, sd: f64) -> f64 {
            let (u, v) = (self.unit(), self.unit());
            mean + sd * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        }
    }

    fn config() -> Config {
        let yaml = "backends:\n  - {name: small, url: 'http://127.0.0.1:1/v1', model: m}\n  - {name: big, url: 'http://127.0.0.1:2/v1', model: m}\nroutes:\n  - name: support\n    utterances: [x]\n    targets: [small, big]\n    experiment: {name: e, variants: {small: 0.5, big: 0.5}}\n";
        Config::parse(yaml, "t", std::path::Path::new(".")).unwrap_or_else(|e| panic!("{e}"))
    }

    /// 400 requests per variant: latency N(100, 20) on small and N(100 + shift, 20) on big,
    /// one in ten of small's failing and `big_errors` in ten of big's.
    fn observed(shift: f64, big_errors: u64) -> ExperimentsReport {
        let memory = MemoryStore::default();
        let mut draws = Draws(42);
        for i in 0..400u64 {
            for (variant, mean, errors) in [("small", 100.0, 1), ("big", 100.0 + shift, big_errors)]
            {
                let failed = i % 10 < errors;
                let o = Observation {
                    failed,
                    latency_ms: (!failed).then(|| draws.normal(mean, 20.0)),
                    ..Observation::default()
                };
                memory.observe("e", variant, &o);
            }
        }
        let store = Store::Memory(memory);
        let reported = futures_util::FutureExt::now_or_never(report(&config(), &store));
        reported
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("a memory report is ready at once"))
    }

    fn comparison<'a>(report: &'a ExperimentsReport, metric: &str) -> &'a Comparison {
        report.experiments[0]
            .comparisons
            .iter()
            .find(|c| c.metric == metric)
            .unwrap_or_else(|| panic!("no {metric}"))
    }

    #[test]
    fn a_known_difference_is_significant() {
        let report = observed(10.0, 2);
        let latency = comparison(&report, "latency_ms");
        let test = latency.result.unwrap_or_else(|| panic!("no test"));
        assert!(test.significant, "{test:?}");
        assert!((test.difference - 10.0).abs() < 4.0, "{test:?}");
        assert_eq!(
            (latency.control.as_str(), latency.variant.as_str()),
            ("small", "big")
        );
        assert_eq!(latency.more_requests_needed, Some(0));
        let errors = comparison(&report, "error_rate");
        assert!(errors.result.is_some_and(|t| t.significant), "{errors:?}");
        let variants = &report.experiments[0].variants;
        assert_eq!((variants[0].requests, variants[0].errors), (400, 40));
        assert_eq!(variants[1].error_rate, Some(0.2));
    }

    #[test]
    fn equal_variants_are_not_and_say_how_many_more_would_tell() {
        let report = observed(0.0, 1);
        let latency = comparison(&report, "latency_ms");
        let test = latency.result.unwrap_or_else(|| panic!("no test"));
        assert!(!test.significant, "{test:?}");
        assert!(
            latency.more_requests_needed.is_some_and(|n| n > 0),
            "{latency:?}"
        );
        let errors = comparison(&report, "error_rate").result;
        assert!(errors.is_some_and(|t| !t.significant && t.difference == 0.0));
        // Nothing observed: no test, no guess.
        assert!(comparison(&report, "feedback").result.is_none());
    }
}
