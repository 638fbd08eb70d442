//! `eval` and `fit`: routing quality measured on labelled prompts, and thresholds tuned
//! on them.

use super::{load_encoder, read_jsonl};
use anyhow::Result;
use semroute::Router;
use semroute::config::Config;
use semroute::offline::eval::{EvalReport, Sample};
use semroute::offline::fit::{Fit, FitRun, FitSettings, Tuning};
use semroute::offline::tune::TuneOptions;
use semroute::offline::weights::{OosShare, Tally, Weights};
use semroute::route::conversation::Speaker;
use std::path::Path;
use std::process::ExitCode;

/// Labelled prompts: every line needs a string `text` and a `route` that is a string or null.
pub fn read_labelled(path: &Path) -> Result<Vec<Sample>> {
    read_jsonl(path)?
        .into_iter()
        .map(|(at, text, value)| {
            let route = match value.get("route") {
                Some(serde_json::Value::String(r)) => Some(r.clone()),
                Some(serde_json::Value::Null) => None,
                _ => anyhow::bail!(
                    "{at}: `route` must be a route name or null (no route should match)"
                ),
            };
            Ok(Sample {
                earlier: earlier_messages(&value),
                turn: value.get("turn").and_then(serde_json::Value::as_u64),
                switch: value.get("switch").and_then(serde_json::Value::as_bool),
                text,
                route,
            })
        })
        .collect()
}

/// A line's messages before its last user message (none for a `text` line).
fn earlier_messages(value: &serde_json::Value) -> Vec<(Speaker, String)> {
    let Some(serde_json::Value::Array(messages)) = value.get("messages") else {
        return Vec::new();
    };
    semroute::route::split_chat(messages)
        .map(|(earlier, _)| {
            earlier
                .into_iter()
                .map(|m| (m.speaker, m.text.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Refuses labels naming routes the config does not have.
fn check_labels(config: &Config, samples: &[Sample], data: &Path) -> Result<()> {
    let unknown: Vec<&str> = samples
        .iter()
        .filter_map(|s| s.route.as_deref())
        .filter(|r| config.route_id(r).is_none())
        .collect();
    if let Some(first) = unknown.first() {
        anyhow::bail!(
            "{} labels {} prompts with routes the config does not have (first: `{first}`)",
            data.display(),
            unknown.len()
        );
    }
    Ok(())
}

/// The config's router, with labels checked against it.
fn load(config_path: &Path, data: &Path) -> Result<(Router, semroute::Encoder, Vec<Sample>)> {
    let config = Config::load(config_path)?;
    let samples = read_labelled(data)?;
    check_labels(&config, &samples, data)?;
    let encoder = load_encoder(&config.encoder, Some(config_path))?;
    let cache_dir = semroute::embed::cache::default_dir();
    let router = Router::build_cached(config, &encoder, cache_dir.as_deref())?;
    Ok((router, encoder, samples))
}

/// Below this out-of-scope share in its data, `fit` suggests `--oos-share`.
const LOW_OOS_SHARE: f64 = 0.1;

pub fn eval(
    config_path: &Path,
    data: &Path,
    json: bool,
    oos_share: Option<OosShare>,
) -> Result<ExitCode> {
    let (router, encoder, samples) = load(config_path, data)?;
    let groups = groups(&samples);
    let weights = Weights::new(groups, oos_share)?;
    let report = semroute::offline::eval::run(&router, &encoder, &samples, &weights)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("prompts          {} ({})", samples.len(), data.display());
    if let Some(share) = oos_share {
        println!(
            "weighted as      {} out of scope (the data: {}); overall accuracy and \
             precision are weighted, in-scope acc and oos recall are not",
            pct(Some(share.get())),
            data_share(groups)
        );
    }
    print_report(&report);
    Ok(ExitCode::SUCCESS)
}

/// The labelled prompts by group.
fn groups(samples: &[Sample]) -> Tally {
    Tally::of(samples.iter().map(|s| s.route.is_some()))
}

/// "3.2% (100 of 3100)".
fn data_share(groups: Tally) -> String {
    format!(
        "{} ({} of {})",
        pct(groups.oos_share()),
        groups.oos,
        groups.total()
    )
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{:.1}%", v * 100.0))
}

fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"))
}

fn print_report(report: &EvalReport) {
    println!("overall accuracy {}", pct(report.overall_acc));
    println!(
        "in-scope top-1   {}  (best route, ignoring thresholds)",
        pct(report.in_scope_top1)
    );
    println!(
        "in-scope acc     {}  (the decision, thresholds applied)",
        pct(report.in_scope_acc)
    );
    println!("oos recall       {}", num(report.oos_recall));
    println!("oos precision    {}", num(report.oos_precision));
    println!("queries/s        {:.0}", report.queries_per_s);
    if let Some(c) = &report.conversation {
        println!(
            "conversation     all {}  switch {}  follow-up {}  first turn {}  ({} turns)",
            pct(c.all_acc),
            pct(c.switch_acc),
            pct(c.follow_up_acc),
            pct(c.first_turn_acc),
            c.items
        );
    }
    let mut worst: Vec<&semroute::offline::eval::RouteMetrics> = report.per_route.iter().collect();
    worst.sort_by(|a, b| a.f1.unwrap_or(0.0).total_cmp(&b.f1.unwrap_or(0.0)));
    println!("\nroutes, worst F1 first (of {}):", worst.len());
    println!(
        "  {:<28} {:>9} {:>7} {:>6} {:>8}",
        "route", "precision", "recall", "f1", "support"
    );
    for m in worst.iter().take(15) {
        println!(
            "  {:<28} {:>9} {:>7} {:>6} {:>8}",
            m.route,
            num(m.precision),
            num(m.recall),
            num(m.f1),
            m.support
        );
    }
    println!("\nmost confused (expected -> chosen):");
    for c in &report.confusions {
        println!(
            "  {} -> {}  x{}  e.g. {:?}",
            c.expected.as_deref().unwrap_or("(no route)"),
            c.predicted.as_deref().unwrap_or("(no route)"),
            c.count,
            c.examples.first().map(String::as_str).unwrap_or("")
        );
    }
}

/// `fit --json`: the fit and the metrics before and after it.
/// `fit`'s options beyond the files.
pub struct FitOptions<'a> {
    pub config: &'a Path,
    pub data: &'a Path,
    pub out: &'a Path,
    pub json: bool,
    /// Fine-tune the encoder on the route utterances first (`None`: keep the model).
    pub tune: Option<semroute::offline::tune::TuneOptions>,
    /// Weigh the prompts as if this share of the traffic were out of scope.
    pub oos_share: Option<OosShare>,
}

pub fn fit(options: FitOptions) -> Result<ExitCode> {
    let FitOptions {
        config: config_path,
        data,
        out,
        json,
        tune,
        oos_share,
    } = options;
    if same_file(config_path, out) {
        anyhow::bail!(
            "--out {} is the config itself; write the fitted config to a new file (fit does not \
             keep the original's comments)",
            out.display()
        );
    }
    let (router, encoder, samples) = load(config_path, data)?;
    // Said before tuning (minutes), so a fit for the wrong mix can be stopped early.
    // (Conversations without out-of-scope prompts fit no threshold: nothing to warn about.)
    let labelled = groups(&samples);
    if labelled.oos > 0 || !semroute::offline::fit::conversation::has_conversations(&samples) {
        warn_low_share(labelled, oos_share);
    }
    let tuning = tune
        .map(|options| tuning(&router, options, config_path, out))
        .transpose()?;
    let settings = FitSettings { tuning, oos_share };
    let run = semroute::offline::fit::run(router, &encoder, &samples, settings)?;
    if let Some((dir, report)) = &run.tuned {
        eprintln!(
            "tuned in {:.0} s ({} steps, loss {:.3} -> {:.3}); model in {}",
            report.seconds,
            report.steps,
            report.first_loss,
            report.last_loss,
            dir.display()
        );
    }
    let header = format!(
        "Written by `semroute fit` from {} and {} ({} labelled prompts){}.\n\
         Overall accuracy on those prompts: {} before, {} after; cross-validated ({} folds): {}.",
        config_path.display(),
        data.display(),
        samples.len(),
        if run.tuned.is_some() {
            ", with the encoder tuned on the route utterances"
        } else {
            ""
        },
        pct(run.before.overall_acc),
        pct(run.after.overall_acc),
        semroute::offline::fit::FOLDS,
        pct(Some(chosen_cv(&run.fitted))),
    );
    std::fs::write(out, run.written.to_yaml(&header)?)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
    let too_few: std::collections::BTreeMap<&str, usize> = run
        .fitted
        .skipped
        .iter()
        .map(|s| (run.config.route(s.route).name.as_str(), s.examples))
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string(&super::fit_report::fit_report(&run, out, too_few.clone()))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "out-of-scope share in the data: {}; {}\n",
        data_share(run.data),
        match oos_share {
            Some(share) => format!("weighting as {}", pct(Some(share.get()))),
            None => "unweighted".to_string(),
        }
    );
    print_fit(&run, &too_few);
    print_conversation_fit(&run);
    println!("\nwrote {}", out.display());
    if let Some((dir, _)) = &run.tuned {
        println!(
            "wrote the tuned encoder to {} (the config's encoder.path)",
            dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_conversation_fit(run: &FitRun) {
    if !run.thresholds_fitted {
        println!(
            "\nthresholds kept: no prompt is labelled null, so only the conversation settings \
             were fitted"
        );
    }
    if let Some(c) = &run.conversation {
        let p = &c.params;
        println!(
            "\nconversation: {} -> {} of the prompts right ({} settings tried); switch_score {}, \
             switch_margin {}, temperature {}, follow_up_weight {}",
            pct(Some(c.before)),
            pct(Some(c.after)),
            c.tried,
            p.switch_score,
            p.switch_margin,
            p.temperature,
            p.follow_up_weight
        );
    }
}

/// A warning on stderr when few labelled prompts are out of scope and no share was given:
/// the threshold then suits traffic with as few, and lets most through on traffic with more.
fn warn_low_share(groups: Tally, oos_share: Option<OosShare>) {
    match groups.oos_share() {
        Some(share) if share < LOW_OOS_SHARE && oos_share.is_none() => eprintln!(
            "warning: only {} of the labelled prompts are out of scope ({} of {}): the \
             thresholds will suit traffic with as few, and let more through where more is \
             out of scope; pass the share you expect with --oos-share (e.g. --oos-share 0.2)",
            pct(Some(share)),
            groups.oos,
            groups.total()
        ),
        _ => {}
    }
}

/// Tuning's settings, announced on stderr (it takes minutes).
fn tuning(router: &Router, options: TuneOptions, config_path: &Path, out: &Path) -> Result<Tuning> {
    let utterances: usize = router
        .config()
        .routes
        .iter()
        .map(|r| r.utterances.len())
        .sum();
    let model_dir = std::path::absolute(out.with_extension("model"))?;
    // Said before tuning, so the model's place is known even if a later step fails.
    eprintln!(
        "tuning the encoder on {utterances} utterances ({} epochs) into {}; this takes minutes",
        options.epochs,
        model_dir.display()
    );
    Ok(Tuning {
        options,
        model_dir,
        model_roots: semroute::serve::model_roots(Some(config_path)),
    })
}

/// The cross-validated accuracy of what was written.
fn chosen_cv(fitted: &Fit) -> f64 {
    if fitted.per_route_kept {
        fitted.cross_validated_per_route
    } else {
        fitted.cross_validated_global
    }
}

fn print_fit(run: &FitRun, too_few: &std::collections::BTreeMap<&str, usize>) {
    let (config, fitted, before, after) = (&run.config, &run.fitted, &run.before, &run.after);
    println!("{:<18} {:>8} {:>8}", "", "before", "after");
    let rows = [
        (
            "overall accuracy",
            pct(before.overall_acc),
            pct(after.overall_acc),
        ),
        (
            "in-scope top-1",
            pct(before.in_scope_top1),
            pct(after.in_scope_top1),
        ),
        (
            "in-scope acc",
            pct(before.in_scope_acc),
            pct(after.in_scope_acc),
        ),
        ("oos recall", num(before.oos_recall), num(after.oos_recall)),
        (
            "oos precision",
            num(before.oos_precision),
            num(after.oos_precision),
        ),
    ];
    for (label, b, a) in rows {
        println!("{label:<18} {b:>8} {a:>8}");
    }
    if !run.thresholds_fitted {
        // The threshold estimates below would describe thresholds nothing moved.
        return;
    }
    println!(
        "\nglobal threshold {:.4} (was {:.4})",
        fitted.thresholds.global,
        config.threshold.get()
    );
    println!(
        "overall accuracy, in-sample vs cross-validated ({} folds):",
        semroute::offline::fit::FOLDS
    );
    println!(
        "  global threshold only   {} vs {}",
        pct(Some(fitted.in_sample_global)),
        pct(Some(fitted.cross_validated_global))
    );
    println!(
        "  with route thresholds   {} vs {}",
        pct(Some(fitted.in_sample_per_route)),
        pct(Some(fitted.cross_validated_per_route))
    );
    let own = fitted
        .thresholds
        .routes
        .iter()
        .filter(|t| t.is_some())
        .count();
    if fitted.per_route_kept {
        println!("per-route thresholds kept: {own} routes have their own");
    } else {
        println!(
            "per-route thresholds dropped: they did not beat the global one in cross-validation"
        );
    }
    if !too_few.is_empty() {
        println!(
            "\n{} routes have fewer than {} labelled prompts and keep the threshold they had:",
            too_few.len(),
            semroute::offline::fit::MIN_ROUTE_EXAMPLES
        );
        for (route, n) in too_few.iter().take(20) {
            println!("  {route}: {n}");
        }
    }
}

/// Whether two paths name the same file (an `out` that does not exist yet never does).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
