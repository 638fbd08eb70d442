//! `fit` on labelled conversations: the `conversation:` settings that decide the most turns
//! right, tried on a grid around the defaults with the fitted thresholds in place. Every
//! message is embedded and scored once; each point of the grid only re-runs the decisions.

use crate::config::{Config, ConversationConfig, ConversationMode};
use crate::embed::{EmbedError, Encoder};
use crate::offline::conversations::Scored;
use crate::offline::eval::{Outcome, Sample};
use crate::route::Router;

/// What the conversation fit found.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationFit {
    pub params: ConversationConfig,
    /// Accuracy on the labelled turns with the settings given, and with those found.
    pub before: f64,
    pub after: f64,
    /// Settings tried.
    pub tried: usize,
    /// Each sample's outcome with the settings found.
    pub outcomes: Vec<Outcome>,
}

const SWITCH_SCORES: [f32; 3] = [0.40, 0.45, 0.50];
const SWITCH_MARGINS: [f32; 3] = [0.10, 0.15, 0.20];
const TEMPERATURES: [f32; 3] = [0.20, 0.25, 0.30];
const FOLLOW_UP_WEIGHTS: [f32; 2] = [0.4, 0.6];

/// Tunes `router`'s conversation settings on `samples` (some with earlier messages).
pub fn fit(
    router: &Router,
    encoder: &Encoder,
    samples: &[Sample],
) -> Result<ConversationFit, EmbedError> {
    let config = router.config();
    let given = ConversationConfig {
        mode: ConversationMode::Context,
        ..config.conversation
    };
    // Every setting tried reads the same history as `given`.
    let scored = Scored::new(router, encoder, samples, &given)?;
    let outcomes = |params: &ConversationConfig| -> Vec<Outcome> {
        scored
            .classify(router, samples, params)
            .iter()
            .zip(samples)
            .map(|(c, s)| Outcome::from_classification(s.route.clone(), c, config))
            .collect()
    };
    let accuracy = |params: &ConversationConfig| {
        let right = outcomes(params)
            .iter()
            .filter(|o| o.predicted == o.expected)
            .count();
        right as f64 / samples.len().max(1) as f64
    };
    let before = accuracy(&config.conversation);
    let mut best = (accuracy(&given), given);
    let mut tried = 1;
    for &switch_score in &SWITCH_SCORES {
        for &switch_margin in &SWITCH_MARGINS {
            for &temperature in &TEMPERATURES {
                for &follow_up_weight in &FOLLOW_UP_WEIGHTS {
                    let params = ConversationConfig {
                        switch_score,
                        switch_margin,
                        temperature,
                        follow_up_weight,
                        ..given
                    };
                    tried += 1;
                    let acc = accuracy(&params);
                    // Strictly better only: among equals the given settings stay.
                    if acc > best.0 {
                        best = (acc, params);
                    }
                }
            }
        }
    }
    Ok(ConversationFit {
        outcomes: outcomes(&best.1),
        params: best.1,
        before,
        after: best.0,
        tried,
    })
}

/// Whether `samples` hold conversations (a prompt with earlier messages).
pub fn has_conversations(samples: &[Sample]) -> bool {
    samples.iter().any(|s| !s.earlier.is_empty())
}

/// `config` with the conversation settings of `found`.
pub fn with_conversation(config: &Config, found: &ConversationFit) -> Config {
    let mut out = config.clone();
    out.conversation = found.params;
    out
}
