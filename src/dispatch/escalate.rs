//! Escalation on a broken contract: a request with `response_format: {type: json_schema}`
//! on a route with `escalate_on: [invalid_json_schema]` has each answer's content checked
//! against its schema (the `jsonschema` crate); content that is not JSON or breaks the
//! schema moves the request on to the next target, at most `max_escalations` times. A
//! stream is held back whole until it is checked, then relayed.

use super::assemble::{Assembler, is_completion};
use super::relay::Piece;
use super::{Answer, AnswerBody, ChatRequest, Destination};
use crate::config::{Config, Escalation};
use serde_json::Value;
use std::sync::Arc;

/// Most JSON values (objects, arrays, scalars) in a schema that is checked; a larger one is
/// left to the backend, so that no request can make the proxy compile a huge schema.
const MAX_SCHEMA_NODES: usize = 10_000;

/// What an answer must be, and how many times a request may move on for it.
pub struct Contract {
    validator: Arc<jsonschema::Validator>,
    pub max_escalations: usize,
}

impl Contract {
    /// The contract of `request` (see `Contract::of`), compiled on a blocking thread: a
    /// schema can take milliseconds to compile, never on the async runtime.
    pub async fn for_request(request: &ChatRequest, config: &Config) -> Option<Contract> {
        let (schema, max_escalations) = Contract::wanted(request, config)?;
        let compiled = tokio::task::spawn_blocking(move || jsonschema::validator_for(&schema))
            .await
            .ok()?;
        match compiled {
            Ok(validator) => Some(Contract {
                validator: Arc::new(validator),
                max_escalations,
            }),
            Err(err) => {
                tracing::debug!(error = %err, "the request's json_schema does not compile; not checked");
                None
            }
        }
    }

    /// Why `completion` breaks the contract, checked on a blocking thread.
    pub async fn broken_off_runtime(&self, completion: Value) -> Option<String> {
        let validator = self.validator.clone();
        tokio::task::spawn_blocking(move || broken(&validator, &completion))
            .await
            .unwrap_or_else(|_| Some("the check failed".into()))
    }

    /// The schema `request` asks its answer to follow and how many escalations its route
    /// allows, when its route escalates on a broken schema. A schema with more than
    /// `MAX_SCHEMA_NODES` values is left to the backend (logged).
    fn wanted(request: &ChatRequest, config: &Config) -> Option<(Value, usize)> {
        let Destination::Route(route) = request.destination else {
            return None;
        };
        let dispatch = &config.route(route).dispatch;
        if !dispatch
            .escalate_on
            .contains(&Escalation::InvalidJsonSchema)
        {
            return None;
        }
        let format = request.body.get("response_format")?;
        if format.get("type").and_then(Value::as_str) != Some("json_schema") {
            return None;
        }
        let schema = format.get("json_schema")?.get("schema")?;
        let mut budget = MAX_SCHEMA_NODES;
        if !within(schema, &mut budget) {
            tracing::info!(
                max = MAX_SCHEMA_NODES,
                "the request's json_schema is too large to check here; left to the backend"
            );
            return None;
        }
        Some((schema.clone(), dispatch.max_escalations))
    }
}

/// Whether `value` has at most `budget` values in all (stops counting past it).
fn within(value: &Value, budget: &mut usize) -> bool {
    if *budget == 0 {
        return false;
    }
    *budget -= 1;
    match value {
        Value::Array(items) => items.iter().all(|v| within(v, budget)),
        Value::Object(map) => map.values().all(|v| within(v, budget)),
        _ => true,
    }
}

/// Why `completion` breaks `validator`'s schema (`None`: every choice's content is JSON the
/// schema accepts). The reason names where, never the answer's text (it is logged).
fn broken(validator: &jsonschema::Validator, completion: &Value) -> Option<String> {
    let choices = completion.get("choices").and_then(Value::as_array)?;
    for (i, choice) in choices.iter().enumerate() {
        let Some(content) = choice["message"]["content"].as_str() else {
            return Some(format!("choice {i} has no text content"));
        };
        let instance: Value = match serde_json::from_str(content) {
            Ok(v) => v,
            Err(err) => {
                return Some(format!(
                    "choice {i} is not JSON (line {}, column {})",
                    err.line(),
                    err.column()
                ));
            }
        };
        if let Some(error) = validator.iter_errors(&instance).next() {
            return Some(format!(
                "choice {i} breaks the schema at `{}` (rule `{}`)",
                error.instance_path(),
                error.schema_path()
            ));
        }
    }
    None
}

/// An answer held back whole to be checked: its completion, and for a stream its pieces
/// to relay once it passes.
pub struct Held {
    pub completion: Option<Value>,
    answer: Answer,
    pieces: Vec<Piece>,
}

impl Held {
    /// Reads `answer` whole (a stream to its end).
    pub async fn hold(answer: Answer) -> Held {
        let Answer { body, .. } = &answer;
        let completion = match body {
            AnswerBody::Full(bytes) => serde_json::from_slice::<Value>(bytes)
                .ok()
                .filter(is_completion),
            AnswerBody::Stream(_) => None,
        };
        let mut answer = answer;
        let AnswerBody::Stream(receiver) = &mut answer.body else {
            return Held {
                completion,
                answer,
                pieces: Vec::new(),
            };
        };
        let mut pieces = Vec::new();
        let mut assembler = Some(Assembler::default());
        while let Some(piece) = receiver.recv().await {
            match &piece {
                Piece::Chunk(chunk) => {
                    if let Some(a) = assembler.as_mut() {
                        a.add(chunk);
                    }
                }
                Piece::Failed(_) => assembler = None,
                Piece::Done { .. } => {}
            }
            let end = !matches!(piece, Piece::Chunk(_));
            pieces.push(piece);
            if end {
                break;
            }
        }
        let whole = matches!(pieces.last(), Some(Piece::Done { .. }));
        Held {
            completion: assembler.filter(|_| whole).map(Assembler::finish),
            answer,
            pieces,
        }
    }

    pub fn status(&self) -> u16 {
        self.answer.status
    }

    pub fn backend(&self) -> crate::config::BackendId {
        self.answer.backend
    }

    /// The answer to relay, as it came (`broken`: it breaks the contract, never cached).
    pub fn release(self, attempts: u32, broken: bool) -> Answer {
        let Held {
            mut answer, pieces, ..
        } = self;
        answer.attempts = attempts;
        answer.broken = broken;
        if let AnswerBody::Stream(_) = answer.body {
            let (tx, rx) = tokio::sync::mpsc::channel(pieces.len().max(1));
            for piece in pieces {
                let _ = tx.try_send(piece);
            }
            answer.body = AnswerBody::Stream(rx);
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Contract(jsonschema::Validator);

    impl Contract {
        fn broken(&self, completion: &Value) -> Option<String> {
            broken(&self.0, completion)
        }
    }

    fn contract() -> Contract {
        let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
        Contract(jsonschema::validator_for(&schema).unwrap())
    }

    fn completion(content: &str) -> Value {
        json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})
    }

    #[test]
    fn content_must_be_json_the_schema_accepts() {
        let c = contract();
        assert_eq!(c.broken(&completion(r#"{"city": "Paris"}"#)), None);
        let not_json = c.broken(&completion("Paris, I think")).unwrap_or_default();
        assert!(not_json.contains("not JSON"), "{not_json}");
        let wrong = c
            .broken(&completion(r#"{"town": "Secret Town"}"#))
            .unwrap_or_default();
        assert!(wrong.contains("breaks the schema"), "{wrong}");
        assert!(
            !wrong.contains("Secret"),
            "the answer's text is not in the reason: {wrong}"
        );
        let empty = json!({"choices": [{"message": {"role": "assistant", "content": null}}]});
        assert!(c.broken(&empty).is_some());
    }

    #[test]
    fn a_schema_is_measured_without_walking_past_the_limit() {
        let mut budget = 5;
        assert!(within(&json!({"a": [1, 2]}), &mut budget));
        let mut budget = 3;
        assert!(!within(&json!({"a": [1, 2, 3, 4]}), &mut budget));
        let huge = Value::Array(vec![json!(1); MAX_SCHEMA_NODES + 1]);
        let mut budget = MAX_SCHEMA_NODES;
        assert!(!within(&huge, &mut budget));
    }
}
