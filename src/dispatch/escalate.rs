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

/// What an answer must be, and how many times a request may move on for it.
pub struct Contract {
    validator: jsonschema::Validator,
    pub max_escalations: usize,
}

impl Contract {
    /// The contract of `request`, when its route escalates on a broken schema and it asks
    /// for one. A schema that does not compile is the client's mistake, left to the
    /// backend (no contract).
    pub fn of(request: &ChatRequest, config: &Config) -> Option<Contract> {
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
        match jsonschema::validator_for(schema) {
            Ok(validator) => Some(Contract {
                validator,
                max_escalations: dispatch.max_escalations,
            }),
            Err(err) => {
                tracing::debug!(error = %err, "the request's json_schema does not compile; not checked");
                None
            }
        }
    }

    /// Why `completion` breaks the contract (`None`: every choice's content is JSON that
    /// the schema accepts).
    pub fn broken(&self, completion: &Value) -> Option<String> {
        let choices = completion.get("choices").and_then(Value::as_array)?;
        for (i, choice) in choices.iter().enumerate() {
            let Some(content) = choice["message"]["content"].as_str() else {
                return Some(format!("choice {i} has no text content"));
            };
            let instance: Value = match serde_json::from_str(content) {
                Ok(v) => v,
                Err(err) => return Some(format!("choice {i} is not JSON: {err}")),
            };
            if let Some(error) = self.validator.iter_errors(&instance).next() {
                return Some(format!("choice {i} breaks the schema: {error}"));
            }
        }
        None
    }
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

    /// The answer to relay, as it came.
    pub fn release(self, attempts: u32) -> Answer {
        let Held {
            mut answer, pieces, ..
        } = self;
        answer.attempts = attempts;
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

    fn contract() -> Contract {
        let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
        Contract {
            validator: jsonschema::validator_for(&schema).unwrap(),
            max_escalations: 1,
        }
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
            .broken(&completion(r#"{"town": "Paris"}"#))
            .unwrap_or_default();
        assert!(wrong.contains("breaks the schema"), "{wrong}");
        let empty = json!({"choices": [{"message": {"role": "assistant", "content": null}}]});
        assert!(c.broken(&empty).is_some());
    }
}
