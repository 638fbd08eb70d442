//! `conversation:`: how the earlier turns of a chat weigh in on the route of its last user
//! message (see `route::conversation` for the model these numbers drive).

use super::Checker;
use super::raw::RawConversation;
use serde_saphyr::Spanned;

/// Most earlier user turns a conversation may be configured to read.
pub const MAX_HISTORY_TURNS: i64 = 64;

/// Whether the route of a chat's last user message uses the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConversationMode {
    /// The last user message alone decides.
    Last,
    /// The earlier turns are evidence too, and the conversation's route is sticky.
    #[default]
    Context,
}

/// The conversation settings; the defaults were chosen on the SGD dev split (README,
/// "Conversations").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConversationConfig {
    pub mode: ConversationMode,
    /// Earlier user turns read (with the assistant messages between them); older ones are
    /// ignored.
    pub history_turns: usize,
    /// The chance that a follow-up stays on the conversation's route.
    pub stickiness: f32,
    /// The same chance at a message that claims another route confidently.
    pub switch_stickiness: f32,
    /// A message claims a route confidently when its best score (before the learned head)
    /// reaches this...
    pub switch_score: f32,
    /// ...and beats the conversation's route by at least this much.
    pub switch_margin: f32,
    /// How sharply a message's scores count as evidence: the evidence for a route is its
    /// score minus the message's best, divided by this.
    pub temperature: f32,
    /// The weight of the evidence of the first user message read (the one that usually
    /// states what the conversation is about).
    pub first_turn_weight: f32,
    /// The weight of an assistant message's evidence.
    pub assistant_weight: f32,
    /// The weight of the evidence of a user message that claims no route confidently.
    pub follow_up_weight: f32,
    /// The weight the evidence gathered so far keeps at each new user turn (1: all of it).
    pub decay: f32,
}

impl Default for ConversationConfig {
    fn default() -> Self {
        ConversationConfig {
            mode: ConversationMode::Context,
            history_turns: 10,
            stickiness: 0.999,
            switch_stickiness: 0.3,
            switch_score: 0.45,
            switch_margin: 0.15,
            temperature: 0.25,
            first_turn_weight: 2.0,
            assistant_weight: 0.5,
            follow_up_weight: 0.5,
            decay: 1.0,
        }
    }
}

impl Checker<'_> {
    pub(super) fn conversation(
        &mut self,
        raw: Option<RawConversation>,
    ) -> Option<ConversationConfig> {
        let Some(raw) = raw else {
            return Some(ConversationConfig::default());
        };
        let d = ConversationConfig::default();
        let mode = match &raw.mode {
            None => Some(d.mode),
            Some(v) => match v.value.trim() {
                "last" => Some(ConversationMode::Last),
                "context" => Some(ConversationMode::Context),
                other => {
                    self.issue(
                        "conversation.mode".into(),
                        v.referenced,
                        format!("unknown conversation mode `{other}`"),
                        "use context (the earlier turns count) or last (the last user message alone)",
                    );
                    None
                }
            },
        };
        let history_turns = match &raw.history_turns {
            Some(v) => self.bounded("conversation.history_turns", v, 0, MAX_HISTORY_TURNS),
            None => Some(d.history_turns),
        };
        let mut number = |key: &str, raw: &Option<Spanned<f64>>, min: f64, max: f64, default| {
            let Some(v) = raw else {
                return Some(default);
            };
            if v.value.is_finite() && v.value >= min && v.value <= max {
                return Some(v.value as f32);
            }
            self.issue(
                format!("conversation.{key}"),
                v.referenced,
                format!("{key} {} is outside [{min}, {max}]", v.value),
                &format!("write a number from {min} to {max}, such as {default}"),
            );
            None
        };
        let stickiness = number("stickiness", &raw.stickiness, 0.0, 1.0, d.stickiness);
        let switch_stickiness = number(
            "switch_stickiness",
            &raw.switch_stickiness,
            0.0,
            1.0,
            d.switch_stickiness,
        );
        let switch_score = number("switch_score", &raw.switch_score, -1.0, 1.0, d.switch_score);
        let switch_margin = number(
            "switch_margin",
            &raw.switch_margin,
            0.0,
            2.0,
            d.switch_margin,
        );
        let temperature = number("temperature", &raw.temperature, 0.01, 10.0, d.temperature);
        let first_turn_weight = number(
            "first_turn_weight",
            &raw.first_turn_weight,
            0.0,
            10.0,
            d.first_turn_weight,
        );
        let assistant_weight = number(
            "assistant_weight",
            &raw.assistant_weight,
            0.0,
            10.0,
            d.assistant_weight,
        );
        let follow_up_weight = number(
            "follow_up_weight",
            &raw.follow_up_weight,
            0.0,
            10.0,
            d.follow_up_weight,
        );
        let decay = number("decay", &raw.decay, 0.0, 1.0, d.decay);
        Some(ConversationConfig {
            mode: mode?,
            history_turns: history_turns?,
            stickiness: stickiness?,
            switch_stickiness: switch_stickiness?,
            switch_score: switch_score?,
            switch_margin: switch_margin?,
            temperature: temperature?,
            first_turn_weight: first_turn_weight?,
            assistant_weight: assistant_weight?,
            follow_up_weight: follow_up_weight?,
            decay: decay?,
        })
    }
}
