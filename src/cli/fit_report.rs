//! `fit --json`: the report's shape.

use semroute::offline::eval::EvalReport;
use semroute::offline::fit::FitRun;
use serde::Serialize;
use std::path::Path;

#[derive(Serialize)]
pub(super) struct FitReport<'a> {
    out: String,
    /// The tuned model's directory and how tuning went (with `--tune-encoder`).
    tuned_model: Option<String>,
    tuning: Option<TuningJson>,
    before: &'a EvalReport,
    after: &'a EvalReport,
    threshold: f32,
    route_thresholds: std::collections::BTreeMap<&'a str, f32>,
    per_route_kept: bool,
    in_sample: Estimates,
    cross_validated: Estimates,
    /// Routes with too few labelled prompts for their own threshold: name -> prompts.
    too_few_examples: std::collections::BTreeMap<&'a str, usize>,
    /// False when no prompt is labelled null and only conversation settings were fitted.
    thresholds_fitted: bool,
    /// The conversation settings fitted (when the prompts are turns of conversations).
    #[serde(skip_serializing_if = "Option::is_none")]
    conversation: Option<ConversationJson>,
    /// The out-of-scope share the fit weighted the prompts as (`None`: as labelled).
    oos_share: Option<f64>,
    /// The labelled prompts: how many, how many out of scope, and that share.
    data_prompts: usize,
    data_oos: usize,
    data_oos_share: Option<f64>,
}

#[derive(Serialize)]
struct ConversationJson {
    before: f64,
    after: f64,
    tried: usize,
    switch_score: f32,
    switch_margin: f32,
    temperature: f32,
    follow_up_weight: f32,
}

#[derive(Serialize)]
struct TuningJson {
    steps: usize,
    seconds: f64,
    first_loss: f64,
    last_loss: f64,
}

/// Overall accuracy with the global threshold alone and with per-route thresholds.
#[derive(Serialize)]
struct Estimates {
    global: f64,
    per_route: f64,
}

pub(super) fn fit_report<'a>(
    run: &'a FitRun,
    out: &Path,
    too_few: std::collections::BTreeMap<&'a str, usize>,
) -> FitReport<'a> {
    let fitted = &run.fitted;
    FitReport {
        out: out.display().to_string(),
        tuned_model: run.tuned.as_ref().map(|(d, _)| d.display().to_string()),
        tuning: run.tuned.as_ref().map(|(_, r)| TuningJson {
            steps: r.steps,
            seconds: r.seconds,
            first_loss: r.first_loss,
            last_loss: r.last_loss,
        }),
        before: &run.before,
        after: &run.after,
        threshold: fitted.thresholds.global,
        route_thresholds: run
            .written
            .routes
            .iter()
            .filter_map(|r| Some((r.name.as_str(), r.threshold?.get())))
            .collect(),
        per_route_kept: fitted.per_route_kept,
        in_sample: Estimates {
            global: fitted.in_sample_global,
            per_route: fitted.in_sample_per_route,
        },
        cross_validated: Estimates {
            global: fitted.cross_validated_global,
            per_route: fitted.cross_validated_per_route,
        },
        too_few_examples: too_few,
        thresholds_fitted: run.thresholds_fitted,
        conversation: run.conversation.as_ref().map(|c| ConversationJson {
            before: c.before,
            after: c.after,
            tried: c.tried,
            switch_score: c.params.switch_score,
            switch_margin: c.params.switch_margin,
            temperature: c.params.temperature,
            follow_up_weight: c.params.follow_up_weight,
        }),
        oos_share: fitted.weights.share(),
        data_prompts: run.data.total(),
        data_oos: run.data.oos,
        data_oos_share: run.data.oos_share(),
    }
}
