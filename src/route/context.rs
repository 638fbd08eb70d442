//! The router's side of conversation routing: each message scored for every route (kept
//! by text, so a conversation's earlier turns are scored once), and the decision for a
//! chat's last user message with the turns before it (`conversation::track`).

use crate::config::{ConversationConfig, ConversationMode, RouteId};
use crate::embed::Embedding;
use crate::embed::cache::TextKey;
use crate::route::conversation::{MessageScores, Scored, Speaker, track};
use crate::route::decide::{MatchedBy, OverrideHit, RouteScore, decide};
use crate::route::{Classification, Router};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::sync::Arc;

/// Messages read per user turn of history, at most (a turn and the answers after it).
pub const MESSAGES_PER_TURN: usize = 3;
/// Routes listed in a conversation report's belief.
const BELIEF_SHOWN: usize = 5;
/// Bytes of message scores kept per router.
const SCORE_CACHE_BYTES: u64 = 16 << 20;

/// What the conversation contributed to a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationReport {
    /// The conversation's route when the last user message arrived.
    pub previous: Option<RouteId>,
    pub outcome: TurnOutcome,
    /// The decision the last user message gets alone.
    pub alone: Alone,
    /// Each route's probability with the conversation, best first (the first few).
    pub belief: Vec<RouteScore>,
    /// User messages read (the last one included) and messages read in all.
    pub user_turns: usize,
    pub messages: usize,
}

/// The last user message's decision without the conversation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Alone {
    pub route: Option<RouteId>,
    pub score: Option<f32>,
    pub matched_by: MatchedBy,
}

/// How the decision relates to the conversation's route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TurnOutcome {
    /// No earlier turn had a route (or `mode: last`): the message decided alone.
    Started,
    /// The decision is the conversation's route.
    Stuck,
    /// The decision moved the conversation to another route.
    Switched,
}

/// One earlier message: who wrote it and its text.
#[derive(Debug, Clone, PartialEq)]
pub struct Earlier<'a> {
    pub speaker: Speaker,
    pub text: Cow<'a, str>,
}

/// A chat's messages (OpenAI's shape) split for routing: the user and assistant messages
/// with text before the last user message, oldest first, and that message's text (`None`:
/// no user message has text). Anything after the last user message is not read.
pub fn split_chat(messages: &[serde_json::Value]) -> Option<(Vec<Earlier<'_>>, Cow<'_, str>)> {
    let speaker = |m: &serde_json::Value| match m.get("role").and_then(|r| r.as_str()) {
        Some("user") => Some(Speaker::User),
        Some("assistant") => Some(Speaker::Assistant),
        _ => None,
    };
    let (at, last) = messages.iter().enumerate().rev().find_map(|(i, m)| {
        (speaker(m) == Some(Speaker::User))
            .then(|| content_text(m.get("content")?))
            .flatten()
            .map(|text| (i, text))
    })?;
    let earlier = messages[..at]
        .iter()
        .filter_map(|m| {
            Some(Earlier {
                speaker: speaker(m)?,
                text: content_text(m.get("content")?)?,
            })
        })
        .collect();
    Some((earlier, last))
}

/// A message's text: a string content, or its text parts joined by newlines. Borrowed when
/// it is one string (a conversation can be tens of megabytes).
pub fn content_text(content: &serde_json::Value) -> Option<Cow<'_, str>> {
    match content {
        serde_json::Value::String(text) => Some(Cow::Borrowed(text)),
        serde_json::Value::Array(parts) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter(|p| p.get("type").and_then(|t| t.as_str()) == Some("text"))
                .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
                .collect();
            (!texts.is_empty()).then(|| Cow::Owned(texts.join("\n")))
        }
        _ => None,
    }
}

/// Per-router memory of message scores, by speaker and text.
pub(crate) type ScoreCache = moka::sync::Cache<TextKey, Arc<MessageScores>>;

pub(crate) fn score_cache(routes: usize) -> ScoreCache {
    moka::sync::Cache::builder()
        .weigher(move |_, _| u32::try_from(routes * 8 + 96).unwrap_or(u32::MAX))
        .max_capacity(SCORE_CACHE_BYTES)
        .build()
}

/// The cache key of a message: who wrote it and its text.
pub fn message_key(speaker: Speaker, text: &str) -> TextKey {
    let mut hasher = Sha256::new();
    hasher.update(match speaker {
        Speaker::User => b"u",
        Speaker::Assistant => b"a",
    });
    hasher.update(text.as_bytes());
    hasher.finalize().into()
}

impl Router {
    /// A message's scores from the cache.
    pub fn cached_scores(&self, key: &TextKey) -> Option<Arc<MessageScores>> {
        self.scores.get(key)
    }

    /// Scores a message from its embedding and its keyword and pattern `hits` (a user's
    /// message; an assistant's are not read), and keeps the result under `key`.
    pub fn score_message(
        &self,
        key: TextKey,
        speaker: Speaker,
        hits: &[OverrideHit],
        query: &Embedding,
    ) -> Arc<MessageScores> {
        let (plain, routed) = self.every_route_score(&query.vector);
        let (pinned, routed_alone) = match speaker {
            Speaker::Assistant => (None, false),
            Speaker::User => {
                let scores: Vec<RouteScore> = self
                    .config()
                    .route_ids()
                    .zip(&routed)
                    .filter(|(_, s)| s.is_finite())
                    .map(|(route, &score)| RouteScore { route, score })
                    .collect();
                let decision = decide(&scores, hits, self.config().as_ref());
                let pinned = matches!(decision.matched_by, MatchedBy::Keyword | MatchedBy::Pattern)
                    .then_some(decision.route)
                    .flatten();
                (pinned, decision_is_routed(decision.matched_by))
            }
        };
        let scores = Arc::new(MessageScores {
            routed,
            plain,
            pinned,
            routed_alone,
        });
        self.scores.insert(key, scores.clone());
        scores
    }

    /// Classifies a chat's last user message with the messages before it (`earlier`,
    /// oldest first, each scored; trim them to the history the config reads with
    /// `history`). `hits` are the last message's override hits.
    pub fn classify_conversation(
        &self,
        earlier: &[(Speaker, &MessageScores)],
        last: &MessageScores,
        hits: Vec<OverrideHit>,
        query: &Embedding,
        top_k: Option<usize>,
    ) -> Classification {
        let params = self.config().conversation;
        self.classify_conversation_with(&params, earlier, last, hits, query, top_k)
    }

    /// `classify_conversation` with other conversation settings than the config's (`fit`
    /// tries several).
    pub fn classify_conversation_with(
        &self,
        params: &ConversationConfig,
        earlier: &[(Speaker, &MessageScores)],
        last: &MessageScores,
        hits: Vec<OverrideHit>,
        query: &Embedding,
        top_k: Option<usize>,
    ) -> Classification {
        let mut c = self.classify_with_hits(hits, query, top_k);
        let alone = Alone {
            route: c.route,
            score: c.score,
            matched_by: c.matched_by,
        };
        let config = self.config();
        let mut messages: Vec<Scored> = Vec::with_capacity(earlier.len() + 1);
        if params.mode == ConversationMode::Context {
            messages.extend(
                earlier
                    .iter()
                    .map(|&(speaker, scores)| Scored { speaker, scores }),
            );
        }
        messages.push(Scored {
            speaker: Speaker::User,
            scores: last,
        });
        let routes: Vec<RouteId> = config.route_ids().collect();
        let t = track(&messages, &routes, params);
        let overridden = matches!(alone.matched_by, MatchedBy::Keyword | MatchedBy::Pattern);
        let outcome = match (t.previous, t.current) {
            (Some(previous), Some(current)) if !overridden => {
                if alone.route != Some(current) || alone.matched_by != MatchedBy::Semantic {
                    c.route = Some(current);
                    c.matched_by = MatchedBy::Conversation;
                    c.score = last
                        .routed
                        .get(current.index())
                        .copied()
                        .filter(|s| s.is_finite());
                    c.threshold = config.threshold_for(current).get();
                }
                if previous == current {
                    TurnOutcome::Stuck
                } else {
                    TurnOutcome::Switched
                }
            }
            (Some(previous), _) if c.route == Some(previous) => TurnOutcome::Stuck,
            (Some(_), _) => TurnOutcome::Switched,
            (None, _) => TurnOutcome::Started,
        };
        c.conversation = Some(ConversationReport {
            previous: t.previous,
            outcome,
            alone,
            belief: t.belief.into_iter().take(BELIEF_SHOWN).collect(),
            user_turns: t.user_turns,
            messages: messages.len(),
        });
        c
    }
}

/// The earlier messages a conversation reads: none with `mode: last`; else the last
/// `history_turns` user messages before the final one, with everything between them, but no
/// more than `MESSAGES_PER_TURN` x `history_turns` messages in all (the latest).
/// `messages` is oldest first and ends before the message being routed.
pub fn history<'a, 'b>(
    messages: &'b [Earlier<'a>],
    params: &ConversationConfig,
) -> &'b [Earlier<'a>] {
    let history_turns = match params.mode {
        ConversationMode::Last => 0,
        ConversationMode::Context => params.history_turns,
    };
    let users: Vec<usize> = (0..messages.len())
        .filter(|&i| messages[i].speaker == Speaker::User)
        .collect();
    let start = match history_turns {
        _ if users.len() <= history_turns => 0,
        0 => messages.len(),
        n => users[users.len() - n],
    };
    // However the turns are made, at most this many messages are read.
    let start = start.max(
        messages
            .len()
            .saturating_sub(MESSAGES_PER_TURN * history_turns),
    );
    &messages[start..]
}

fn decision_is_routed(matched_by: MatchedBy) -> bool {
    matches!(
        matched_by,
        MatchedBy::Semantic | MatchedBy::Keyword | MatchedBy::Pattern
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(list: &[(Speaker, &'static str)]) -> Vec<Earlier<'static>> {
        list.iter()
            .map(|&(speaker, text)| Earlier {
                speaker,
                text: Cow::Borrowed(text),
            })
            .collect()
    }

    fn turns(history_turns: usize) -> ConversationConfig {
        ConversationConfig {
            history_turns,
            ..ConversationConfig::default()
        }
    }

    #[test]
    fn history_keeps_the_last_user_turns_and_what_lies_between() {
        use Speaker::{Assistant as A, User as U};
        let all = texts(&[
            (U, "u1"),
            (A, "a1"),
            (U, "u2"),
            (A, "a2"),
            (U, "u3"),
            (A, "a3"),
        ]);
        let kept: Vec<&str> = history(&all, &turns(2))
            .iter()
            .map(|m| m.text.as_ref())
            .collect();
        assert_eq!(kept, ["u2", "a2", "u3", "a3"]);
        assert!(history(&all, &turns(0)).is_empty());
        assert_eq!(history(&all, &turns(10)).len(), 6);
        let last = ConversationConfig {
            mode: ConversationMode::Last,
            ..turns(10)
        };
        assert!(history(&all, &last).is_empty());
        // A flood of answers cannot widen what is read.
        let mut flood = texts(&[(U, "u1")]);
        flood.extend(texts(&[(A, "a"); 1000]));
        assert_eq!(history(&flood, &turns(10)).len(), MESSAGES_PER_TURN * 10);
        assert_eq!(history(&flood, &turns(2)).len(), MESSAGES_PER_TURN * 2);
    }

    #[test]
    fn a_chat_splits_at_its_last_user_message() {
        let chat = serde_json::json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "book a table"},
            {"role": "assistant", "content": "for how many?"},
            {"role": "tool", "content": "ignored"},
            {"role": "user", "content": [{"type": "text", "text": "two"}, {"type": "image_url"}]},
            {"role": "assistant", "content": "prefill, not read"},
        ]);
        let list = chat.as_array().cloned().unwrap_or_default();
        let (earlier, last) = split_chat(&list).unwrap_or_else(|| panic!("a user message"));
        assert_eq!(last, "two");
        let read: Vec<(Speaker, &str)> = earlier
            .iter()
            .map(|m| (m.speaker, m.text.as_ref()))
            .collect();
        assert_eq!(
            read,
            [
                (Speaker::User, "book a table"),
                (Speaker::Assistant, "for how many?")
            ]
        );
        assert!(split_chat(&[serde_json::json!({"role": "assistant", "content": "hi"})]).is_none());
    }

    #[test]
    fn keys_differ_by_speaker() {
        assert_ne!(
            message_key(Speaker::User, "hi"),
            message_key(Speaker::Assistant, "hi")
        );
        assert_eq!(
            message_key(Speaker::User, "hi"),
            message_key(Speaker::User, "hi")
        );
    }
}
