//! The JSON body sent upstream: the client's body with `model` replaced (and, when asked,
//! `stream`, `stream_options` and a trailing assistant prefill), written straight from the
//! client's parsed body without copying it, however large the conversation.

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Value};

/// How the client's body is changed for one upstream call.
pub struct UpstreamBody<'a> {
    pub client: &'a Map<String, Value>,
    pub model: &'a str,
    /// Send as a stream that reports usage (`stream: true`, `stream_options.include_usage:
    /// true`, the client's other stream options kept), so every streamed answer is counted.
    pub force_stream: bool,
    /// Text to append as a final assistant message (a continuation's prefill).
    pub prefill: Option<&'a str>,
}

impl UpstreamBody<'_> {
    /// The JSON bytes; `size_hint` (the client's body size) sizes the buffer once, so a
    /// large body is never copied by the buffer growing.
    pub fn to_vec(&self, size_hint: usize) -> serde_json::Result<Vec<u8>> {
        let extra = self.prefill.map_or(0, str::len) + 256;
        let mut out = Vec::with_capacity(size_hint.saturating_add(extra));
        serde_json::to_writer(&mut out, self)?;
        Ok(out)
    }
}

impl Serialize for UpstreamBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in self.client {
            match key.as_str() {
                "model" => continue,
                "stream" | "stream_options" if self.force_stream => continue,
                "messages" => match (self.prefill, value) {
                    (Some(prefill), Value::Array(messages)) => {
                        map.serialize_entry(key, &WithPrefill { messages, prefill })?;
                    }
                    _ => map.serialize_entry(key, value)?,
                },
                _ => map.serialize_entry(key, value)?,
            }
        }
        map.serialize_entry("model", self.model)?;
        if self.force_stream {
            let mut options = match self.client.get("stream_options") {
                Some(Value::Object(options))
                    if self.client.get("stream") == Some(&Value::Bool(true)) =>
                {
                    options.clone()
                }
                _ => Map::new(),
            };
            options.insert("include_usage".into(), true.into());
            map.serialize_entry("stream", &true)?;
            map.serialize_entry("stream_options", &options)?;
        }
        map.end()
    }
}

struct WithPrefill<'a> {
    messages: &'a [Value],
    prefill: &'a str,
}

impl Serialize for WithPrefill<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.messages.len() + 1))?;
        for message in self.messages {
            seq.serialize_element(message)?;
        }
        seq.serialize_element(&serde_json::json!({"role": "assistant", "content": self.prefill}))?;
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn client() -> Map<String, Value> {
        match json!({"model": "auto", "stream": false, "stream_options": {"x": 1}, "temperature": 0.2,
                     "messages": [{"role": "user", "content": "hi"}]})
        {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    fn written(body: &UpstreamBody) -> Value {
        serde_json::from_slice(&body.to_vec(0).unwrap_or_default()).unwrap_or_default()
    }

    #[test]
    fn the_model_is_replaced_and_the_rest_passes_through() {
        let client = client();
        let body = UpstreamBody {
            client: &client,
            model: "small",
            force_stream: false,
            prefill: None,
        };
        let out = written(&body);
        assert_eq!(out["model"], "small");
        assert_eq!(out["stream"], false);
        assert_eq!(out["stream_options"], json!({"x": 1}));
        assert_eq!(out["temperature"], 0.2);
        assert_eq!(out["messages"], client["messages"]);
    }

    #[test]
    fn a_forced_stream_asks_for_usage_and_a_prefill_is_appended() {
        let client = client();
        let body = UpstreamBody {
            client: &client,
            model: "small",
            force_stream: true,
            prefill: Some("Hello wor"),
        };
        let out = written(&body);
        assert_eq!(out["stream"], true);
        assert_eq!(out["stream_options"], json!({"include_usage": true}));
        // A streaming client's own options are kept, with usage asked for.
        let mut streaming = client.clone();
        streaming.insert("stream".into(), true.into());
        let body = UpstreamBody {
            client: &streaming,
            model: "small",
            force_stream: true,
            prefill: None,
        };
        assert_eq!(
            written(&body)["stream_options"],
            json!({"x": 1, "include_usage": true})
        );
        assert_eq!(
            out["messages"],
            json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello wor"}])
        );
    }
}
