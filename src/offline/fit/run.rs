//! `semroute fit` end to end, as a library call: classify the labelled prompts, tune the
//! encoder and classify again if asked, fit the thresholds, and build the config to write,
//! with the metrics before and after. The command line only reads files and prints.

use super::conversation::{ConversationFit, has_conversations, with_conversation};
use super::{Fit, FitError, Observation};
use crate::config::{Config, Threshold};
use crate::embed::{EmbedError, Encoder, ModelError, cache};
use crate::offline::eval::{self, ConversationMetrics, EvalReport, Outcome, Sample};
use crate::offline::tune::{self, TuneError, TuneOptions, TuneReport};
use crate::offline::weights::{OosShare, Tally, Weights, WeightsError};
use crate::route::{BuildError, Classification, Router};
use std::path::PathBuf;
use std::sync::Arc;

/// Fine-tuning the encoder before the fit (`fit --tune-encoder`).
pub struct Tuning {
    pub options: TuneOptions,
    /// Where the tuned model is written.
    pub model_dir: PathBuf,
    /// Where the base model's files are looked for.
    pub model_roots: Vec<PathBuf>,
}

/// How to fit, beyond the data.
#[derive(Default)]
pub struct FitSettings {
    /// Tune the encoder first (`None`: keep the model).
    pub tuning: Option<Tuning>,
    /// Weigh the prompts as if this share of the traffic were out of scope (`None`: as
    /// labelled).
    pub oos_share: Option<OosShare>,
}

/// What a fit found and what to write.
pub struct FitRun {
    /// The config the thresholds were fitted on (the tuned encoder's, with tuning).
    pub config: Arc<Config>,
    /// That config with the fitted thresholds: what `fit` writes.
    pub written: Config,
    pub fitted: Fit,
    /// The labelled prompts by group (their out-of-scope share is what `oos_share` corrects).
    pub data: Tally,
    /// The labelled prompts' metrics (weighted as the fit was) with the config as given, and as written.
    pub before: EvalReport,
    pub after: EvalReport,
    /// The tuned model's directory and how tuning went.
    pub tuned: Option<(PathBuf, TuneReport)>,
    /// The conversation settings fitted, when the prompts are turns of conversations.
    pub conversation: Option<ConversationFit>,
    /// Whether the thresholds were fitted (not when no prompt is labelled null and the fit
    /// is of conversations only).
    pub thresholds_fitted: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum FitRunError {
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tune(#[from] TuneError),
    #[error(transparent)]
    Fit(#[from] FitError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("fit produced an invalid threshold: {0}")]
    Threshold(f32),
}

/// Fits `router`'s thresholds on `samples` (labels already checked against its config).
pub fn run(
    router: Router,
    encoder: &Encoder,
    samples: &[Sample],
    settings: FitSettings,
) -> Result<FitRun, FitRunError> {
    // Before classifying (and tuning, which takes minutes): data that cannot be fitted.
    // Conversations without a prompt labelled null fit the conversation settings only.
    let conversations = has_conversations(samples);
    let labels = super::check_labels(samples.iter().map(|s| s.route.is_some()));
    let thresholds_fitted = match labels {
        Ok(()) => true,
        Err(FitError::NoOutOfScope { .. }) if conversations && settings.oos_share.is_none() => {
            false
        }
        Err(err) => return Err(err.into()),
    };
    let data = Tally::of(samples.iter().map(|s| s.route.is_some()));
    let weights = Weights::new(data, settings.oos_share)?;
    let (classifications, queries_per_s) = eval::classify_all(&router, encoder, samples)?;
    let texts: Vec<&str> = samples.iter().map(|s| s.text.as_str()).collect();
    let before_outcomes: Vec<Outcome> = samples
        .iter()
        .zip(&classifications)
        .map(|(s, c)| Outcome::from_classification(s.route.clone(), c, router.config()))
        .collect();
    let mut before = eval::metrics(&before_outcomes, &texts, queries_per_s, &weights);
    before.conversation = ConversationMetrics::new(samples, &before_outcomes);
    // With tuning, thresholds are fitted to the tuned encoder's scores.
    let (router, classifications, tuned) = match settings.tuning {
        None => (router, classifications, None),
        Some(tuning) => {
            let (router, classifications, report) = tune_and_classify(&router, samples, &tuning)?;
            (router, classifications, Some((tuning.model_dir, report)))
        }
    };
    let config = router.config().clone();
    let observations: Vec<Observation> = samples
        .iter()
        .zip(&classifications)
        .map(|(s, c)| Observation::new(s.route.as_deref().and_then(|r| config.route_id(r)), c))
        .collect();
    let current: Vec<_> = config
        .route_ids()
        .map(|r| (r, config.route(r).threshold.map(Threshold::get)))
        .collect();
    let fitted = if thresholds_fitted {
        super::fit(&observations, &current, &weights)?
    } else {
        super::keep(&observations, &current, config.threshold.get())
    };
    let name = |r| config.route(r).name.to_string();
    let after_outcomes: Vec<Outcome> = observations
        .iter()
        .zip(samples)
        .map(|(o, sample)| Outcome {
            expected: sample.route.clone(),
            predicted: fitted.thresholds.decide(o).map(name),
            top1: o.scores.first().map(|s| name(s.route)),
        })
        .collect();
    let mut after = eval::metrics(&after_outcomes, &texts, queries_per_s, &weights);
    let mut written = with_thresholds(&config, &fitted)?;
    // The conversation settings are fitted with the fitted thresholds in place (on the
    // tuned encoder's scores, with tuning).
    let conversation = match (conversations, &tuned) {
        (false, _) => None,
        (true, Some((dir, _))) => {
            let encoder = Encoder::load(&written.encoder, std::slice::from_ref(dir))?;
            Some(fit_conversation(&written, &encoder, samples)?)
        }
        (true, None) => Some(fit_conversation(&written, encoder, samples)?),
    };
    if let Some(found) = &conversation {
        written = with_conversation(&written, found);
        after = eval::metrics(&found.outcomes, &texts, queries_per_s, &weights);
        after.conversation = ConversationMetrics::new(samples, &found.outcomes);
    }
    Ok(FitRun {
        config,
        written,
        fitted,
        data,
        before,
        after,
        tuned,
        conversation,
        thresholds_fitted,
    })
}

/// Fits the conversation settings of `config` (with its thresholds) on `samples`.
fn fit_conversation(
    config: &Config,
    encoder: &Encoder,
    samples: &[Sample],
) -> Result<ConversationFit, FitRunError> {
    let router = Router::build_cached(config.clone(), encoder, cache::default_dir().as_deref())?;
    Ok(super::conversation::fit(&router, encoder, samples)?)
}

/// Tunes the encoder on the routes' utterances, then builds the router on the tuned model
/// and classifies the samples with it.
fn tune_and_classify(
    router: &Router,
    samples: &[Sample],
    tuning: &Tuning,
) -> Result<(Router, Vec<Classification>, TuneReport), FitRunError> {
    let mut config = (**router.config()).clone();
    let files = crate::embed::files::resolve(&config.encoder, &tuning.model_roots)
        .map_err(ModelError::from)?;
    let routes: Vec<Vec<String>> = config.routes.iter().map(|r| r.utterances.clone()).collect();
    let report = tune::tune(&files, &routes, &tuning.options, &tuning.model_dir)?;
    config.encoder.path = Some(tuning.model_dir.clone());
    let encoder = Encoder::load(&config.encoder, &tuning.model_roots)?;
    let router = Router::build_cached(config, &encoder, cache::default_dir().as_deref())?;
    let (classifications, _) = eval::classify_all(&router, &encoder, samples)?;
    Ok((router, classifications, report))
}

/// `config` with the fitted global and per-route thresholds.
fn with_thresholds(config: &Config, fitted: &Fit) -> Result<Config, FitRunError> {
    let global = fitted.thresholds.global;
    let mut written = config.clone();
    written.threshold = Threshold::new(global).ok_or(FitRunError::Threshold(global))?;
    for (route, value) in written.routes.iter_mut().zip(&fitted.thresholds.routes) {
        route.threshold = value.and_then(Threshold::new);
    }
    Ok(written)
}
