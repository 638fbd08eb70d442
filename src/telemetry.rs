//! The app's metrics for `GET /metrics`: every family registered once in `Metrics` and
//! counted through its typed methods (a misspelt metric is a compile error, not a series
//! that is never exported), plus the process's own figures read at each scrape
//! (`telemetry/process.rs`). Rendered in Prometheus' text format (version 0.0.4).
//!
//! Counters are atomics and each family's series map takes a read lock, so counting never
//! serialises requests on one global lock. Labels are route and backend names, statuses and
//! outcome kinds: never a key, a header or anything from a request's body.
//!
//! The decision log (`telemetry/decisions.rs`), one JSON line per routing decision, lives
//! here too: it is what happened to each request, as the metrics are what happened in sum.

pub mod decisions;
mod process;
mod tenants;

pub use tenants::{Refused, Tenants};

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::fmt::Write;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Histogram bucket bounds, in seconds.
const BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The kind of tokens a backend's `usage` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    Prompt,
    Completion,
}

impl EncodeLabelValue for TokenKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            TokenKind::Prompt => "prompt",
            TokenKind::Completion => "completion",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Answered {
    route: String,
    backend: String,
    status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Attempted {
    backend: String,
    outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteBackend {
    route: String,
    backend: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OnBackend {
    backend: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Tokens {
    route: String,
    backend: String,
    kind: TokenKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Reloaded {
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CacheLookup {
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Escalated {
    route: String,
    from: String,
    to: String,
    reason: &'static str,
}

/// The label set of a metric without labels (a family of at most one series, so that the
/// series appears only once something was counted).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Unlabelled {}

type Histograms<S> = Family<S, Histogram, fn() -> Histogram>;

/// A family whose `# HELP` and `# TYPE` lines are rendered even before its first series
/// (the encoder leaves empty families out), so every documented metric is listed from the
/// start.
#[derive(Debug)]
struct Listed<M>(M);

impl<M: EncodeMetric> EncodeMetric for Listed<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }

    fn is_empty(&self) -> bool {
        false
    }
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

fn histograms<S: Clone + Eq + std::hash::Hash>() -> Histograms<S> {
    Family::new_with_constructor(histogram)
}

/// Every metric of the app, registered once.
pub struct Metrics {
    registry: Registry,
    requests: Family<Answered, Counter>,
    attempts: Family<Attempted, Counter>,
    fallbacks: Family<RouteBackend, Counter>,
    cooldowns: Family<OnBackend, Counter>,
    tokens: Family<Tokens, Counter>,
    cost: Family<RouteBackend, Counter<f64, AtomicU64>>,
    upstream_latency: Histograms<OnBackend>,
    upstream_ttfb: Histograms<OnBackend>,
    classification: Histograms<Unlabelled>,
    reloads: Family<Reloaded, Counter>,
    decisions_dropped: Counter,
    cache_lookups: Family<CacheLookup, Counter>,
    cache_saved_usd: Family<Unlabelled, Counter<f64, AtomicU64>>,
    escalations: Family<Escalated, Counter>,
    /// Refusals, spend and budgets, and the shared state.
    pub tenants: Tenants,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            attempts: Family::default(),
            fallbacks: Family::default(),
            cooldowns: Family::default(),
            tokens: Family::default(),
            cost: Family::default(),
            upstream_latency: histograms(),
            upstream_ttfb: histograms(),
            classification: histograms(),
            reloads: Family::default(),
            decisions_dropped: Counter::default(),
            cache_lookups: Family::default(),
            cache_saved_usd: Family::default(),
            escalations: Family::default(),
            tenants: Tenants::default(),
        }
        .registered()
    }
}

impl Metrics {
    /// Registers every family, in the order they are rendered. Counters are named without
    /// `_total`: the encoder appends it.
    fn registered(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register(
            "semroute_requests",
            "Proxied requests answered, by route, backend and status",
            Listed(self.requests.clone()),
        );
        r.register(
            "semroute_upstream_attempts",
            "Attempts on backends, by outcome",
            Listed(self.attempts.clone()),
        );
        r.register(
            "semroute_fallbacks",
            "Times a request moved on from a backend to the next target",
            Listed(self.fallbacks.clone()),
        );
        r.register(
            "semroute_cooldowns",
            "Times a backend entered a cooldown",
            Listed(self.cooldowns.clone()),
        );
        r.register(
            "semroute_tokens",
            "Tokens reported by backends' usage, by kind",
            Listed(self.tokens.clone()),
        );
        r.register(
            "semroute_cost_usd",
            "Cost of the tokens at the backend's configured prices",
            Listed(self.cost.clone()),
        );
        r.register(
            "semroute_upstream_latency_seconds",
            "Time from sending to the full answer (streams: to the first event)",
            Listed(self.upstream_latency.clone()),
        );
        r.register(
            "semroute_upstream_ttfb_seconds",
            "Time from sending to the response headers",
            Listed(self.upstream_ttfb.clone()),
        );
        r.register(
            "semroute_classification_seconds",
            "Time to embed and classify a prompt for model auto",
            Listed(self.classification.clone()),
        );
        r.register(
            "semroute_config_reloads",
            "Config reloads, by result: ok, unchanged (the file is the one in service), error (the old config kept serving)",
            Listed(self.reloads.clone()),
        );
        r.register(
            "semroute_decision_log_dropped",
            "Decision log lines not written: the log's queue was full or the write failed",
            self.decisions_dropped.clone(),
        );
        r.register(
            "semroute_cache_lookups",
            "Answer cache lookups, by result: hit, semantic_hit, miss",
            Listed(self.cache_lookups.clone()),
        );
        r.register(
            "semroute_cache_saved_usd",
            "What the answers served from the cache cost when they were first made",
            Listed(self.cache_saved_usd.clone()),
        );
        r.register(
            "semroute_escalations",
            "Requests moved to the next target because the answer broke its contract, by route, from, to and reason",
            Listed(self.escalations.clone()),
        );
        self.tenants.register(r);
        r.register_collector(Box::new(process::Process));
        self
    }

    /// A reload ended with `result` (`ok`, `unchanged` or `error`).
    pub fn reloaded(&self, result: &'static str) {
        self.reloads.get_or_create(&Reloaded { result }).inc();
    }

    /// A proxied request was answered (`backend` `-` when none answered).
    pub fn answered(&self, route: &str, backend: &str, status: &str) {
        let labels = Answered {
            route: route.into(),
            backend: backend.into(),
            status: status.into(),
        };
        self.requests.get_or_create(&labels).inc();
    }

    /// One attempt on `backend` ended: `ok`, or the failed outcome's label.
    pub fn attempted(&self, backend: &str, outcome: &str) {
        let labels = Attempted {
            backend: backend.into(),
            outcome: outcome.into(),
        };
        self.attempts.get_or_create(&labels).inc();
    }

    /// A request moved on from `backend` to the next target.
    pub fn fell_back(&self, route: &str, backend: &str) {
        self.fallbacks
            .get_or_create(&route_backend(route, backend))
            .inc();
    }

    /// `backend` entered a cooldown.
    pub fn cooled_down(&self, backend: &str) {
        self.cooldowns.get_or_create(&on(backend)).inc();
    }

    /// Tokens of one kind that `backend`'s `usage` reported.
    pub fn tokens(&self, route: &str, backend: &str, kind: TokenKind, count: u64) {
        let labels = Tokens {
            route: route.into(),
            backend: backend.into(),
            kind,
        };
        self.tokens.get_or_create(&labels).inc_by(count);
    }

    /// What those tokens cost, in US dollars.
    pub fn cost(&self, route: &str, backend: &str, usd: f64) {
        self.cost
            .get_or_create(&route_backend(route, backend))
            .inc_by(usd);
    }

    /// From sending to the full answer (streams: to the first event).
    pub fn upstream_latency(&self, backend: &str, elapsed: Duration) {
        self.upstream_latency
            .get_or_create(&on(backend))
            .observe(elapsed.as_secs_f64());
    }

    /// From sending to the response headers.
    pub fn upstream_ttfb(&self, backend: &str, elapsed: Duration) {
        self.upstream_ttfb
            .get_or_create(&on(backend))
            .observe(elapsed.as_secs_f64());
    }

    /// Embedding and classifying one prompt for `model: auto`.
    pub fn classified(&self, elapsed: Duration) {
        self.classification
            .get_or_create(&Unlabelled {})
            .observe(elapsed.as_secs_f64());
    }

    /// Decision log lines were dropped (their queue was full, or writing them failed).
    pub fn decisions_dropped(&self, lines: u64) {
        self.decisions_dropped.inc_by(lines);
    }

    /// An answer cache lookup: `hit`, `semantic_hit` or `miss`; a hit saved `saved_usd`.
    pub fn cache_lookup(&self, result: &'static str, saved_usd: f64) {
        self.cache_lookups
            .get_or_create(&CacheLookup { result })
            .inc();
        if saved_usd > 0.0 && saved_usd.is_finite() {
            self.cache_saved_usd
                .get_or_create(&Unlabelled {})
                .inc_by(saved_usd);
        }
    }

    /// A request moved from backend `from` to `to` on `route` because its answer broke its
    /// contract (`reason`: `invalid_json_schema`).
    pub fn escalated(&self, route: &str, from: &str, to: &str, reason: &'static str) {
        self.escalations
            .get_or_create(&Escalated {
                route: route.to_string(),
                from: from.to_string(),
                to: to.to_string(),
                reason,
            })
            .inc();
    }

    /// Everything, in Prometheus' text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; a collector's error would only cut the text short.
        if let Err(err) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::warn!(error = %err, "the metrics text is incomplete");
        }
        out
    }
}

fn route_backend(route: &str, backend: &str) -> RouteBackend {
    RouteBackend {
        route: route.into(),
        backend: backend.into(),
    }
}

fn on(backend: &str) -> OnBackend {
    OnBackend {
        backend: backend.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render_in_the_text_format() {
        let m = Metrics::default();
        m.answered("chat", "a", "200");
        m.answered("chat", "a", "200");
        m.upstream_ttfb("a\"b", Duration::from_millis(3));
        let text = m.render();
        assert!(
            text.contains(
                "semroute_requests_total{route=\"chat\",backend=\"a\",status=\"200\"} 2\n"
            ),
            "{text}"
        );
        assert!(text.contains(
            "semroute_upstream_ttfb_seconds_bucket{backend=\"a\\\"b\",le=\"0.0025\"} 0\n"
        ));
        assert!(text.contains(
            "semroute_upstream_ttfb_seconds_bucket{backend=\"a\\\"b\",le=\"0.005\"} 1\n"
        ));
        assert!(text.contains("semroute_upstream_ttfb_seconds_count{backend=\"a\\\"b\"} 1\n"));
        assert!(text.contains("# TYPE semroute_cooldowns_total counter"));
    }

    #[test]
    fn tokens_are_whole_numbers_and_cost_a_plain_decimal() {
        let m = Metrics::default();
        m.tokens("chat", "b", TokenKind::Prompt, 10);
        m.tokens("chat", "b", TokenKind::Completion, 5);
        m.cost("chat", "b", 0.00002);
        m.attempted("a", "http_503");
        m.fell_back("chat", "a");
        m.cooled_down("a");
        m.upstream_latency("b", Duration::from_millis(40));
        m.classified(Duration::from_millis(2));
        let text = m.render();
        for line in [
            "semroute_tokens_total{route=\"chat\",backend=\"b\",kind=\"prompt\"} 10",
            "semroute_tokens_total{route=\"chat\",backend=\"b\",kind=\"completion\"} 5",
            "semroute_cost_usd_total{route=\"chat\",backend=\"b\"} 0.00002",
            "semroute_upstream_attempts_total{backend=\"a\",outcome=\"http_503\"} 1",
            "semroute_fallbacks_total{route=\"chat\",backend=\"a\"} 1",
            "semroute_cooldowns_total{backend=\"a\"} 1",
            "semroute_upstream_latency_seconds_bucket{backend=\"b\",le=\"0.05\"} 1",
            "semroute_upstream_latency_seconds_bucket{backend=\"b\",le=\"+Inf\"} 1",
            "semroute_classification_seconds_count 1",
        ] {
            assert!(
                text.contains(&format!("{line}\n")),
                "missing {line}:\n{text}"
            );
        }
    }

    /// The metric names in the README's `GET /metrics` paragraph (`semroute_*`, `process_*`).
    fn documented() -> Vec<String> {
        let readme = include_str!("../README.md");
        let start = readme.find("**`GET /metrics`**").unwrap_or(readme.len());
        let paragraph = readme[start..].split("\n\n").next().unwrap_or_default();
        paragraph
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|word| word.starts_with("semroute_") || word.starts_with("process_"))
            .map(|word| word.split('{').next().unwrap_or(word).to_string())
            .collect()
    }

    #[test]
    fn every_documented_metric_is_exported_and_every_exported_one_documented() {
        let text = Metrics::default().render();
        let documented = documented();
        assert!(documented.len() >= 9, "{documented:?}");
        let exported: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        for name in &documented {
            // Process metrics are absent where the platform has no `/proc`.
            if cfg!(target_os = "linux") || name.starts_with("semroute_") {
                assert!(
                    exported.contains(&name.as_str()),
                    "{name} is not exported:\n{text}"
                );
            }
        }
        for name in &exported {
            assert!(
                documented.iter().any(|d| d == name),
                "{name} is exported but not in the README"
            );
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_process_metrics_are_exported_on_linux() {
        let text = Metrics::default().render();
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} sample:\n{text}"))
        };
        assert!(value("process_cpu_seconds_total") >= 0.0);
        assert!(value("process_resident_memory_bytes") > 1e5);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_threads") >= 1.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        let start = value("process_start_time_seconds");
        assert!(
            start > now - 86_400.0 && start <= now + 1.0,
            "{start} vs {now}"
        );
        assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"));
        assert!(text.contains("# TYPE process_open_fds gauge\n"));
    }
}
