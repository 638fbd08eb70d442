//! What a request may consume: its prompt's tokens (estimated) and its answer's cap, and so
//! the most tokens and USD it can take on each backend. Budgets reserve from this, context
//! windows and `strategy: cheapest` read it.

use crate::config::Backend;
use serde_json::{Map, Value};

/// Tokens a message costs beyond its text (role, separators), as OpenAI counts them.
const PER_MESSAGE: u64 = 4;
/// Tokens every request costs (the reply's priming).
const PER_REQUEST: u64 = 3;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Demand {
    /// The prompt's tokens, estimated.
    pub prompt_tokens: u64,
    /// The answer's cap from the request (the larger of `max_completion_tokens` and
    /// `max_tokens`, times `n`); `None`: the backend's `max_output_tokens` (times `n`).
    pub max_output: Option<u64>,
    /// The choices asked for (`n`; 0 is taken as 1).
    pub choices: u64,
}

impl Demand {
    /// The request's demand; `count` estimates a text's tokens.
    pub fn of(body: &Map<String, Value>, count: impl Fn(&str) -> u64) -> Demand {
        let mut prompt_tokens = PER_REQUEST;
        if let Some(Value::Array(messages)) = body.get("messages") {
            for message in messages {
                prompt_tokens = prompt_tokens
                    .saturating_add(PER_MESSAGE)
                    .saturating_add(text_tokens(message, &count));
            }
        }
        // Tool definitions are sent to the model too.
        for key in ["tools", "functions", "response_format"] {
            if let Some(value) = body.get(key) {
                prompt_tokens = prompt_tokens.saturating_add(count(&value.to_string()));
            }
        }
        // An upstream may honour either cap, and read `3.0` or `"3"` as 3: the most any
        // reading allows is what is reserved.
        let cap = ["max_completion_tokens", "max_tokens"]
            .iter()
            .filter_map(|k| body.get(*k).and_then(whole))
            .max();
        let choices = body.get("n").and_then(whole).unwrap_or(1).max(1);
        Demand {
            prompt_tokens,
            max_output: cap.map(|c| c.saturating_mul(choices)),
            choices,
        }
    }

    /// The answer's most tokens on `backend`.
    pub fn output_on(&self, backend: &Backend) -> u64 {
        self.max_output.unwrap_or_else(|| {
            backend
                .max_output_tokens
                .saturating_mul(self.choices.max(1))
        })
    }

    /// The most tokens (prompt and answer) the request takes on `backend`.
    pub fn max_tokens_on(&self, backend: &Backend) -> u64 {
        self.prompt_tokens.saturating_add(self.output_on(backend))
    }

    /// The most USD the request costs on `backend` (a backend without `cost` costs nothing).
    pub fn max_usd_on(&self, backend: &Backend) -> f64 {
        backend.cost.map_or(0.0, |c| {
            (self.prompt_tokens as f64 * c.input_per_mtok
                + self.output_on(backend) as f64 * c.output_per_mtok)
                / 1e6
        })
    }

    /// Whether `backend`'s context window holds the prompt and the requested cap.
    pub fn fits(&self, backend: &Backend) -> bool {
        // Each choice is its own completion: the window holds the prompt and one answer.
        let per_choice = self.max_output.unwrap_or(0) / self.choices.max(1);
        backend
            .context_window
            .is_none_or(|window| self.prompt_tokens.saturating_add(per_choice) <= window)
    }
}

/// A count as an OpenAI-compatible server may read it: a whole number, a number with a
/// fraction (rounded up) or a string holding either; `None` for anything else or below 0.
fn whole(value: &Value) -> Option<u64> {
    let number = match value {
        Value::Number(n) if n.is_u64() => return n.as_u64(),
        Value::Number(n) => n.as_f64(),
        Value::String(text) => text.trim().parse::<f64>().ok(),
        _ => None,
    }?;
    // `as` saturates: a huge count stays huge.
    (number.is_finite() && number >= 0.0).then(|| number.ceil() as u64)
}

/// The tokens of a message's text: its content (a string or parts), tool calls and name.
fn text_tokens(message: &Value, count: &impl Fn(&str) -> u64) -> u64 {
    let mut tokens = 0u64;
    let mut add = |text: &str| tokens = tokens.saturating_add(count(text));
    match message.get("content") {
        Some(Value::String(text)) => add(text),
        Some(Value::Array(parts)) => {
            for part in parts {
                match part.get("text").and_then(Value::as_str) {
                    Some(text) => add(text),
                    // Images and audio: their JSON, a rough stand-in.
                    None => add(&part.to_string()),
                }
            }
        }
        _ => {}
    }
    if let Some(calls) = message.get("tool_calls") {
        add(&calls.to_string());
    }
    if let Some(Value::String(name)) = message.get("name") {
        add(name);
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn words(text: &str) -> u64 {
        text.split_whitespace().count() as u64
    }

    fn body(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn the_prompt_counts_every_message_and_the_cap_counts_every_choice() {
        let demand = Demand::of(
            &body(json!({"messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "one two three"}]}
            ], "max_tokens": 100, "n": 3})),
            words,
        );
        assert_eq!(demand.prompt_tokens, 3 + (4 + 2) + (4 + 3));
        assert_eq!(demand.max_output, Some(300));
        let uncapped = Demand::of(&body(json!({"messages": []})), words);
        assert_eq!(uncapped.max_output, None);
    }

    #[test]
    fn loosely_written_counts_are_read_as_a_lenient_server_reads_them() {
        let demand = Demand::of(
            &body(
                json!({"messages": [], "max_tokens": "50", "max_completion_tokens": 7.2, "n": 2.0}),
            ),
            words,
        );
        assert_eq!(demand.max_output, Some(100));
        let uncapped = Demand::of(&body(json!({"messages": [], "n": "3"})), words);
        assert_eq!((uncapped.max_output, uncapped.choices), (None, 3));
        let nonsense = Demand::of(
            &body(json!({"messages": [], "n": -2, "max_tokens": "x"})),
            words,
        );
        assert_eq!((nonsense.max_output, nonsense.choices), (None, 1));
    }

    #[test]
    fn absurd_caps_saturate_instead_of_wrapping() {
        let demand = Demand::of(
            &body(json!({"messages": [], "max_tokens": u64::MAX, "n": 5})),
            words,
        );
        assert_eq!(demand.max_output, Some(u64::MAX));
        assert_eq!(demand.prompt_tokens.saturating_add(u64::MAX), u64::MAX);
    }

    #[test]
    fn a_context_window_holds_the_prompt_and_one_choice() {
        let demand = Demand::of(
            &body(json!({"messages": [], "max_tokens": 100, "n": 4})),
            words,
        );
        let backend = |window: u64| {
            let yaml = format!(
                "backends:\n  - name: b\n    url: http://127.0.0.1:1/v1\n    model: m\n    context_window: {window}\nroutes:\n  - name: r\n    utterances: [x]\n    targets: [b]\n"
            );
            crate::config::Config::parse(&yaml, "t", std::path::Path::new("."))
                .unwrap()
                .backends
                .remove(0)
        };
        assert!(demand.fits(&backend(103)));
        assert!(!demand.fits(&backend(102)));
    }
}
