//! Chat completions and their streamed chunks, both ways: the relay's chunks folded into
//! one `chat.completion` (for a client that did not ask to stream, whose request went
//! upstream as a stream), and a whole completion turned into one chunk (for a provider that
//! answered a streaming request without streaming).

use super::relay::Piece;
use super::{Answer, AnswerBody, DispatchError};
use crate::config::BackendId;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// The text fields of a message or a delta that are concatenated piece by piece.
pub const TEXT_FIELDS: [&str; 4] = ["content", "refusal", "reasoning_content", "reasoning"];

/// The completion-level fields a chunk carries and a completion keeps (the first seen wins).
const HEADER_FIELDS: [&str; 5] = [
    "id",
    "created",
    "model",
    "system_fingerprint",
    "service_tier",
];

/// A tool call being put together from its deltas.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolCall {
    pub id: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub arguments: String,
}

impl ToolCall {
    /// Adds one `tool_calls[]` delta (`id` and `type` are set once, `name` and
    /// `arguments` arrive in pieces).
    pub fn add(&mut self, delta: &Value) {
        if let Some(id) = delta["id"].as_str().filter(|s| !s.is_empty()) {
            self.id.get_or_insert_with(|| id.to_string());
        }
        if let Some(kind) = delta["type"].as_str() {
            self.kind.get_or_insert_with(|| kind.to_string());
        }
        if let Some(name) = delta["function"]["name"].as_str() {
            self.name.push_str(name);
        }
        if let Some(arguments) = delta["function"]["arguments"].as_str() {
            self.arguments.push_str(arguments);
        }
    }

    /// The whole call as one delta entry (with its `index`) or message entry (without).
    pub fn to_json(&self, index: Option<u64>) -> Value {
        let mut call = Map::new();
        if let Some(index) = index {
            call.insert("index".into(), index.into());
        }
        if let Some(id) = &self.id {
            call.insert("id".into(), id.clone().into());
        }
        call.insert(
            "type".into(),
            self.kind
                .clone()
                .unwrap_or_else(|| "function".into())
                .into(),
        );
        call.insert(
            "function".into(),
            json!({"name": self.name, "arguments": self.arguments}),
        );
        Value::Object(call)
    }
}

#[derive(Debug, Default)]
struct Choice {
    role: Option<String>,
    texts: BTreeMap<&'static str, String>,
    tool_calls: BTreeMap<u64, ToolCall>,
    logprobs: BTreeMap<String, Vec<Value>>,
    finish_reason: Option<Value>,
}

/// Folds streamed chunks into one completion.
#[derive(Debug, Default)]
pub struct Assembler {
    header: Map<String, Value>,
    choices: BTreeMap<u64, Choice>,
    usage: Option<Value>,
}

impl Assembler {
    pub fn add(&mut self, chunk: &Value) {
        for key in HEADER_FIELDS {
            if let Some(v) = chunk.get(key).filter(|v| !v.is_null()) {
                self.header.entry(key).or_insert_with(|| v.clone());
            }
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(usage.clone());
        }
        let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
            return;
        };
        for (position, c) in choices.iter().enumerate() {
            let index = c["index"].as_u64().unwrap_or(position as u64);
            let choice = self.choices.entry(index).or_default();
            let delta = &c["delta"];
            if let Some(role) = delta["role"].as_str() {
                choice.role.get_or_insert_with(|| role.to_string());
            }
            for field in TEXT_FIELDS {
                if let Some(piece) = delta[field].as_str() {
                    choice.texts.entry(field).or_default().push_str(piece);
                }
            }
            if let Some(calls) = delta["tool_calls"].as_array() {
                for (i, call) in calls.iter().enumerate() {
                    let at = call["index"].as_u64().unwrap_or(i as u64);
                    choice.tool_calls.entry(at).or_default().add(call);
                }
            }
            if let Some(logprobs) = c["logprobs"].as_object() {
                for (kind, entries) in logprobs {
                    if let Some(entries) = entries.as_array() {
                        choice
                            .logprobs
                            .entry(kind.clone())
                            .or_default()
                            .extend(entries.iter().cloned());
                    }
                }
            }
            if let Some(reason) = c.get("finish_reason").filter(|r| !r.is_null()) {
                choice.finish_reason = Some(reason.clone());
            }
        }
    }

    /// The completion, in OpenAI's `chat.completion` shape.
    pub fn finish(self) -> Value {
        let mut out = Map::new();
        out.insert(
            "id".into(),
            self.header
                .get("id")
                .cloned()
                .unwrap_or_else(|| "chatcmpl-semroute".into()),
        );
        out.insert("object".into(), "chat.completion".into());
        for &key in &HEADER_FIELDS[1..] {
            if let Some(v) = self.header.get(key) {
                out.insert(key.into(), v.clone());
            }
        }
        let choices: Vec<Value> = self
            .choices
            .into_iter()
            .map(|(index, c)| {
                let mut message = Map::new();
                message.insert(
                    "role".into(),
                    c.role.unwrap_or_else(|| "assistant".into()).into(),
                );
                let content = c.texts.get("content").cloned();
                message.insert(
                    "content".into(),
                    match content {
                        Some(text) => text.into(),
                        None if !c.tool_calls.is_empty() => Value::Null,
                        None => "".into(),
                    },
                );
                for field in &TEXT_FIELDS[1..] {
                    if let Some(text) = c.texts.get(field) {
                        message.insert((*field).into(), text.clone().into());
                    }
                }
                if !c.tool_calls.is_empty() {
                    let calls: Vec<Value> = c
                        .tool_calls
                        .values()
                        .map(|call| call.to_json(None))
                        .collect();
                    message.insert("tool_calls".into(), calls.into());
                }
                let logprobs = if c.logprobs.is_empty() {
                    Value::Null
                } else {
                    Value::Object(
                        c.logprobs
                            .into_iter()
                            .map(|(k, v)| (k, Value::Array(v)))
                            .collect(),
                    )
                };
                json!({
                    "index": index,
                    "message": message,
                    "logprobs": logprobs,
                    "finish_reason": c.finish_reason.unwrap_or(Value::Null),
                })
            })
            .collect();
        out.insert("choices".into(), choices.into());
        if let Some(usage) = self.usage {
            out.insert("usage".into(), usage);
        }
        Value::Object(out)
    }
}

/// Whether `body` is a chat completion: an object with a `choices` list and no `error`.
pub fn is_completion(body: &Value) -> bool {
    body.get("choices").is_some_and(Value::is_array) && body.get("error").is_none_or(Value::is_null)
}

/// A whole completion as one streamed chunk (each message as its choice's delta).
pub fn completion_to_chunk(completion: &Value) -> Value {
    let mut chunk = Map::new();
    for &key in HEADER_FIELDS.iter().chain(&["usage"]) {
        if let Some(v) = completion.get(key) {
            chunk.insert(key.into(), v.clone());
        }
    }
    chunk.insert("object".into(), "chat.completion.chunk".into());
    let choices: Vec<Value> = completion["choices"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .enumerate()
                .map(|(i, c)| {
                    let mut delta = c["message"].as_object().cloned().unwrap_or_default();
                    if let Some(Value::Array(calls)) = delta.get_mut("tool_calls") {
                        for (j, call) in calls.iter_mut().enumerate() {
                            if let Value::Object(call) = call {
                                call.entry("index").or_insert(j.into());
                            }
                        }
                    }
                    json!({
                        "index": c["index"].as_u64().unwrap_or(i as u64),
                        "delta": delta,
                        "logprobs": c.get("logprobs").cloned().unwrap_or(Value::Null),
                        "finish_reason": c.get("finish_reason").cloned().unwrap_or(Value::Null),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    chunk.insert("choices".into(), choices.into());
    Value::Object(chunk)
}

/// A streamed answer for a client that did not ask to stream: its pieces folded into one
/// completion.
pub async fn reassembled(
    pieces: tokio::sync::mpsc::Receiver<Piece>,
    attempts: u32,
) -> Result<Answer, DispatchError> {
    let (completion, backend) = collect(pieces).await?;
    let bytes = serde_json::to_vec(&completion).map_err(|e| DispatchError::Exhausted {
        attempts: vec![format!("cannot write the answer: {e}")],
    })?;
    Ok(Answer {
        status: 200,
        content_type: Some("application/json".into()),
        body: AnswerBody::Full(Bytes::from(bytes)),
        backend,
        attempts,
        broken: false,
    })
}

/// Folds a relay's pieces into one completion, or the failure that ended it.
async fn collect(
    mut pieces: tokio::sync::mpsc::Receiver<Piece>,
) -> Result<(Value, BackendId), DispatchError> {
    let mut assembler = Assembler::default();
    while let Some(piece) = pieces.recv().await {
        match piece {
            Piece::Chunk(chunk) => assembler.add(&chunk),
            Piece::Done { backend } => return Ok((assembler.finish(), backend)),
            Piece::Failed(failure) => {
                return Err(DispatchError::Exhausted {
                    attempts: vec![failure],
                });
            }
        }
    }
    Err(DispatchError::Exhausted {
        attempts: vec!["the answer ended without finishing".into()],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_fold_into_one_completion_with_every_field() {
        let chunks = [
            json!({"id": "c1", "created": 7, "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"reasoning_content": "think"}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hel"}}, {"index": 1, "delta": {"refusal": "No"}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "lo", "tool_calls": [{"index": 0, "id": "t1", "type": "function", "function": {"name": "get", "arguments": "{\"a\""}}]}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}, "finish_reason": "tool_calls"}, {"index": 1, "delta": {}, "finish_reason": "stop"}]}),
            json!({"id": "c1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}),
        ];
        let mut a = Assembler::default();
        for c in &chunks {
            a.add(c);
        }
        let out = a.finish();
        assert_eq!(out["object"], "chat.completion");
        assert_eq!(out["id"], "c1");
        assert_eq!(out["model"], "m");
        let first = &out["choices"][0];
        assert_eq!(first["message"]["content"], "Hello");
        assert_eq!(first["message"]["reasoning_content"], "think");
        assert_eq!(
            first["message"]["tool_calls"],
            json!([{"id": "t1", "type": "function", "function": {"name": "get", "arguments": "{\"a\": 1}"}}])
        );
        assert_eq!(first["finish_reason"], "tool_calls");
        assert_eq!(out["choices"][1]["message"]["refusal"], "No");
        assert_eq!(out["choices"][1]["finish_reason"], "stop");
        assert_eq!(out["usage"]["total_tokens"], 7);
    }

    #[test]
    fn a_completion_becomes_one_chunk_that_folds_back_to_it() {
        let completion = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                "logprobs": null, "finish_reason": "tool_calls"}],
            "usage": {"total_tokens": 2}});
        let chunk = completion_to_chunk(&completion);
        assert_eq!(chunk["choices"][0]["delta"]["tool_calls"][0]["index"], 0);
        let mut a = Assembler::default();
        a.add(&chunk);
        assert_eq!(a.finish(), completion);
    }

    #[test]
    fn an_error_or_a_page_is_not_a_completion() {
        assert!(is_completion(&json!({"choices": []})));
        assert!(!is_completion(
            &json!({"error": {"message": "x"}, "choices": []})
        ));
        assert!(!is_completion(&json!("<html>")));
    }
}
