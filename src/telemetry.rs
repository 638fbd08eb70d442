//! Counters and histograms for `GET /metrics`, in Prometheus' text format: requests, attempts
//! and their outcomes, fallbacks, cooldowns, upstream latency and time to first byte,
//! classification latency, tokens and cost per route and backend. Label sets are few (routes
//! x backends x outcomes), so a mutex-guarded map is all the structure needed.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Histogram bucket bounds, in seconds.
const BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

type Labels = Vec<(&'static str, String)>;

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bound, count) in BUCKETS.iter().zip(self.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

#[derive(Default)]
struct Families {
    counters: BTreeMap<(&'static str, Labels), f64>,
    histograms: BTreeMap<(&'static str, Labels), Histogram>,
}

/// Help text per metric name.
const HELP: [(&str, &str, &str); 9] = [
    (
        "semroute_requests_total",
        "counter",
        "Proxied requests answered, by route, backend and status",
    ),
    (
        "semroute_upstream_attempts_total",
        "counter",
        "Attempts on backends, by outcome",
    ),
    (
        "semroute_fallbacks_total",
        "counter",
        "Times a request moved on from a backend to the next target",
    ),
    (
        "semroute_cooldowns_total",
        "counter",
        "Times a backend entered a cooldown",
    ),
    (
        "semroute_tokens_total",
        "counter",
        "Tokens reported by backends' usage, by kind",
    ),
    (
        "semroute_cost_usd_total",
        "counter",
        "Cost of the tokens at the backend's configured prices",
    ),
    (
        "semroute_upstream_latency_seconds",
        "histogram",
        "Time from sending to the full answer (streams: to the first event)",
    ),
    (
        "semroute_upstream_ttfb_seconds",
        "histogram",
        "Time from sending to the response headers",
    ),
    (
        "semroute_classification_seconds",
        "histogram",
        "Time to embed and classify a prompt for model auto",
    ),
];

#[derive(Default)]
pub struct Metrics {
    families: Mutex<Families>,
}

impl Metrics {
    pub fn add(&self, name: &'static str, labels: &[(&'static str, &str)], value: f64) {
        if let Ok(mut f) = self.families.lock() {
            *f.counters.entry((name, owned(labels))).or_default() += value;
        }
    }

    pub fn observe(&self, name: &'static str, labels: &[(&'static str, &str)], value: Duration) {
        if let Ok(mut f) = self.families.lock() {
            f.histograms
                .entry((name, owned(labels)))
                .or_default()
                .observe(value.as_secs_f64());
        }
    }

    /// The current value of a counter (tests and the README's examples read them).
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> f64 {
        self.families
            .lock()
            .map(|f| {
                f.counters
                    .get(&(name, owned(labels)))
                    .copied()
                    .unwrap_or(0.0)
            })
            .unwrap_or(0.0)
    }

    /// Everything, in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let Ok(f) = self.families.lock() else {
            return String::new();
        };
        let mut out = String::new();
        for (name, kind, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((n, labels), value) in &f.counters {
                if *n == name {
                    let _ = writeln!(out, "{name}{} {value}", render_labels(labels, None));
                }
            }
            for ((n, labels), h) in &f.histograms {
                if *n != name {
                    continue;
                }
                for (bound, count) in BUCKETS.iter().zip(h.counts) {
                    let le = format!("{bound}");
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {count}",
                        render_labels(labels, Some(&le))
                    );
                }
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {}",
                    render_labels(labels, Some("+Inf")),
                    h.count
                );
                let _ = writeln!(out, "{name}_sum{} {}", render_labels(labels, None), h.sum);
                let _ = writeln!(
                    out,
                    "{name}_count{} {}",
                    render_labels(labels, None),
                    h.count
                );
            }
        }
        out
    }
}

fn owned(labels: &[(&'static str, &str)]) -> Labels {
    labels.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

fn render_labels(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render_in_the_text_format() {
        let m = Metrics::default();
        m.add(
            "semroute_requests_total",
            &[("route", "chat"), ("backend", "a"), ("status", "200")],
            1.0,
        );
        m.add(
            "semroute_requests_total",
            &[("route", "chat"), ("backend", "a"), ("status", "200")],
            1.0,
        );
        m.observe(
            "semroute_upstream_ttfb_seconds",
            &[("backend", "a\"b")],
            Duration::from_millis(3),
        );
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
        assert_eq!(
            m.counter(
                "semroute_requests_total",
                &[("route", "chat"), ("backend", "a"), ("status", "200")]
            ),
            2.0
        );
    }
}
