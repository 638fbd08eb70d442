//! `semroute experiments --url`: a running service's experiments report
//! (`GET /admin/experiments`), as a table per experiment or as its JSON.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::process::ExitCode;

/// Fetches the report from `url` (the service's base URL), with the admin key from the
/// environment variable `admin_key_env` when given, and prints it.
pub fn run(url: &str, admin_key_env: Option<&str>, json: bool) -> Result<ExitCode> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let key = match admin_key_env {
        Some(name) => {
            Some(std::env::var(name).with_context(|| format!("the variable {name} is not set"))?)
        }
        None => None,
    };
    let endpoint = format!("{}/admin/experiments", url.trim_end_matches('/'));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, body) = runtime
        .block_on(async {
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()?;
            let mut request = client.get(&endpoint);
            if let Some(key) = &key {
                request = request.bearer_auth(key);
            }
            let answer = request.send().await?;
            let status = answer.status();
            anyhow::Ok((status, answer.text().await?))
        })
        .with_context(|| format!("cannot reach {endpoint}"))?;
    if !status.is_success() {
        bail!("{endpoint} answered {status}: {body}");
    }
    let report: Value = serde_json::from_str(&body).context("the answer is not JSON")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// The report as text: each experiment's variants, then its comparisons.
fn table(report: &Value) -> String {
    let mut out = String::new();
    let experiments = report["experiments"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    if experiments.is_empty() {
        out.push_str("no experiments in the config in service\n");
    }
    for e in experiments {
        out.push_str(&format!(
            "experiment {} (route {}, sticky by {})\n",
            text(&e["name"]),
            text(&e["route"]),
            text(&e["sticky"])
        ));
        out.push_str(&format!(
            "  {:<16} {:>6} {:>9} {:>7} {:>22} {:>22} {:>18}\n",
            "variant",
            "share",
            "requests",
            "errors",
            "latency ms (95% CI)",
            "ttfb ms (95% CI)",
            "feedback (n)"
        ));
        for v in e["variants"].as_array().map_or(&[][..], Vec::as_slice) {
            out.push_str(&format!(
                "  {:<16} {:>6.2} {:>9} {:>7} {:>22} {:>22} {:>18}\n",
                text(&v["backend"]),
                v["share"].as_f64().unwrap_or(0.0),
                v["requests"],
                v["errors"],
                mean(&v["latency_ms"]),
                mean(&v["ttfb_ms"]),
                format!(
                    "{} ({})",
                    number(&v["feedback"]["mean"]),
                    v["feedback"]["n"]
                ),
            ));
        }
        for c in e["comparisons"].as_array().map_or(&[][..], Vec::as_slice) {
            let verdict = match &c["result"] {
                Value::Null => "not enough data yet".to_string(),
                r => format!(
                    "{} {} (p = {:.4}, difference {}){}",
                    if r["significant"] == true {
                        "DIFFERENT"
                    } else {
                        "no difference shown"
                    },
                    text(&r["test"]),
                    r["p_value"].as_f64().unwrap_or(1.0),
                    number(&r["difference"]),
                    match c["more_requests_needed"].as_u64() {
                        Some(n) if n > 0 =>
                            format!("; about {n} more requests per variant to tell"),
                        _ => String::new(),
                    }
                ),
            };
            out.push_str(&format!(
                "  {:<11} {} vs {}: {verdict}\n",
                text(&c["metric"]),
                text(&c["variant"]),
                text(&c["control"])
            ));
        }
    }
    out
}

fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

fn number(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".into(), |x| format!("{x:.3}"))
}

fn mean(m: &Value) -> String {
    match (m["mean"].as_f64(), m["ci95"].as_array()) {
        (Some(mean), Some(ci)) => format!(
            "{mean:.1} [{:.1}, {:.1}]",
            ci[0].as_f64().unwrap_or(f64::NAN),
            ci.get(1).and_then(Value::as_f64).unwrap_or(f64::NAN)
        ),
        (Some(mean), None) => format!("{mean:.1}"),
        _ => "-".into(),
    }
}
