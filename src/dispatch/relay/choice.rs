//! One choice of a relayed answer: what of each text field has been relayed, the tool calls
//! held back until the choice finishes, and the rewrite of each upstream delta so that
//! nothing is relayed twice (after a restart, only what goes past the relayed text).

use crate::dispatch::assemble::{TEXT_FIELDS, ToolCall};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// Choices of one answer (`n` is at most this).
pub const MAX_CHOICES: u64 = 128;
/// Tool calls of one choice.
const MAX_TOOL_CALLS: u64 = 1024;

/// One choice of the answer, as relayed so far.
#[derive(Debug, Default)]
pub struct Choice {
    pub role_sent: bool,
    /// Relayed text per field (`content`, `refusal`, reasoning).
    pub texts: BTreeMap<&'static str, String>,
    /// After a restart: how much of each field's relayed text the new answer has repeated.
    pub replay: Option<BTreeMap<&'static str, usize>>,
    /// Tool calls held back until the choice finishes.
    pub tools: BTreeMap<u64, ToolCall>,
    pub finished: bool,
}

impl Choice {
    pub fn replay_complete(&self) -> bool {
        self.replay.as_ref().is_none_or(|done| {
            self.texts
                .iter()
                .all(|(field, text)| done.get(field).copied().unwrap_or(0) >= text.len())
        })
    }

    /// Rewrites one upstream choice entry: a repeated role dropped, text already relayed
    /// cut away (after a restart), tool-call deltas taken into the held calls, and on the
    /// choice's finish the held calls released whole. `Err` when a restarted answer
    /// diverges from what was relayed, or finishes before repeating it.
    pub fn rewrite(&mut self, index: u64, mut c: Value) -> Result<Rewritten, String> {
        let mut out = Rewritten::default();
        if self.finished {
            return Ok(out);
        }
        let mut delta = match c.get_mut("delta").map(Value::take) {
            Some(Value::Object(delta)) => delta,
            _ => Map::new(),
        };
        if delta.contains_key("role") {
            if self.role_sent {
                delta.remove("role");
            } else {
                self.role_sent = true;
            }
        }
        let mut trimmed = false;
        for field in TEXT_FIELDS {
            let Some(Value::String(piece)) = delta.remove(field) else {
                continue;
            };
            match take_new(self, field, &piece) {
                Ok(Some(new)) => {
                    trimmed |= new.len() != piece.len();
                    delta.insert(field.into(), new.into());
                }
                Ok(None) => trimmed = true,
                Err(()) => {
                    return Err(format!(
                        "the restarted answer's {field} differs from what was relayed"
                    ));
                }
            }
        }
        if let Some(Value::Array(calls)) = delta.remove("tool_calls") {
            for (i, call) in calls.iter().enumerate() {
                match index_of(call, i, MAX_TOOL_CALLS) {
                    Some(at) => self.tools.entry(at).or_default().add(call),
                    None => {
                        tracing::warn!(index = %call["index"], "skipping a tool call with an invalid index")
                    }
                }
            }
        }
        if trimmed && let Value::Object(c) = &mut c {
            c.remove("logprobs");
        }
        let finished = !c["finish_reason"].is_null();
        if finished {
            if !self.replay_complete() {
                return Err(
                    "the restarted answer finished before repeating what was relayed".into(),
                );
            }
            self.finished = true;
            if !self.tools.is_empty() {
                out.calls = Some(tools_choice(index, &std::mem::take(&mut self.tools)));
            }
        }
        let has_logprobs = !c["logprobs"].is_null();
        if delta.is_empty() && !finished && !has_logprobs {
            return Ok(out);
        }
        c["delta"] = Value::Object(delta);
        out.choice = Some(c);
        Ok(out)
    }
}

/// What one upstream choice entry becomes.
#[derive(Debug, Default)]
pub struct Rewritten {
    /// The choice's whole tool calls, released as it finishes (sent first).
    pub calls: Option<Value>,
    /// The entry to relay, if anything is left of it.
    pub choice: Option<Value>,
}

/// Bytes of text and tool calls a delta adds to the answer.
pub fn delta_size(delta: &Value) -> usize {
    let texts: usize = TEXT_FIELDS
        .iter()
        .filter_map(|f| delta.get(*f).and_then(Value::as_str))
        .map(str::len)
        .sum();
    let calls: usize = delta
        .get("tool_calls")
        .and_then(Value::as_array)
        .map_or(0, |calls| {
            calls
                .iter()
                .map(|c| {
                    c["function"]["arguments"].as_str().map_or(0, str::len)
                        + c["function"]["name"].as_str().map_or(0, str::len)
                })
                .sum()
        });
    texts + calls
}

/// The part of `piece` (a delta of `field`) that is new, recording it as relayed; `None`
/// when all of it repeats relayed text; `Err` when a restarted answer diverges.
fn take_new(state: &mut Choice, field: &'static str, piece: &str) -> Result<Option<String>, ()> {
    let relayed = state.texts.entry(field).or_default();
    let Some(replay) = &mut state.replay else {
        relayed.push_str(piece);
        return Ok(Some(piece.to_string()));
    };
    let done = replay.entry(field).or_insert(0);
    let rest = relayed.get(*done..).unwrap_or("");
    if rest.is_empty() {
        relayed.push_str(piece);
        *done = relayed.len();
        return Ok(Some(piece.to_string()));
    }
    if rest.starts_with(piece) {
        *done += piece.len();
        return Ok(None);
    }
    if let Some(new) = piece.strip_prefix(rest) {
        let new = new.to_string();
        relayed.push_str(&new);
        *done = relayed.len();
        return Ok((!new.is_empty()).then_some(new));
    }
    Err(())
}

/// An entry's `index`: its position when absent; `None` when it is not a whole number
/// below `limit` (the entry is skipped, the same way for streaming and non-streaming
/// clients).
pub fn index_of(entry: &Value, position: usize, limit: u64) -> Option<u64> {
    match entry.get("index") {
        None | Some(Value::Null) => Some(position as u64),
        Some(index) => index.as_u64().filter(|&i| i < limit),
    }
}

/// A choice entry carrying whole tool calls.
pub fn tools_choice(index: u64, tools: &BTreeMap<u64, ToolCall>) -> Value {
    let calls: Vec<Value> = tools
        .iter()
        .map(|(&i, call)| call.to_json(Some(i)))
        .collect();
    json!({"index": index, "delta": {"tool_calls": calls}, "finish_reason": null})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_relays_only_what_goes_past_the_relayed_text() {
        let mut state = Choice::default();
        assert_eq!(
            take_new(&mut state, "content", "Hello wor"),
            Ok(Some("Hello wor".into()))
        );
        state.replay = Some(BTreeMap::new());
        assert_eq!(take_new(&mut state, "content", "Hel"), Ok(None));
        assert_eq!(
            take_new(&mut state, "content", "lo world"),
            Ok(Some("ld".into()))
        );
        assert_eq!(take_new(&mut state, "content", "!"), Ok(Some("!".into())));
        assert!(state.replay_complete());
        assert_eq!(state.texts["content"], "Hello world!");

        let mut other = Choice::default();
        let _ = take_new(&mut other, "content", "Hello");
        other.replay = Some(BTreeMap::new());
        assert_eq!(take_new(&mut other, "content", "Goodbye"), Err(()));
        assert!(!other.replay_complete());
    }

    #[test]
    fn a_finished_choice_releases_its_tool_calls_whole_and_then_takes_nothing() {
        let mut choice = Choice::default();
        let piece = |args: &str, finish: Value| {
            json!({"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "t", "type": "function",
                "function": {"name": "", "arguments": args}}]}, "finish_reason": finish})
        };
        let first = choice
            .rewrite(0, piece("{\"a\"", Value::Null))
            .unwrap_or_default();
        assert!(first.calls.is_none() && first.choice.is_none(), "held back");
        let last = choice
            .rewrite(0, piece(": 1}", json!("tool_calls")))
            .unwrap_or_default();
        let calls = last.calls.unwrap_or_default();
        assert_eq!(
            calls["delta"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\": 1}"
        );
        assert!(
            last.choice
                .is_some_and(|c| c["finish_reason"] == "tool_calls")
        );
        let after = choice
            .rewrite(0, piece("x", Value::Null))
            .unwrap_or_default();
        assert!(after.calls.is_none() && after.choice.is_none());
    }
}
