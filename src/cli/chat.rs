//! `semroute classify --messages`: each input is a conversation (a JSON list of chat
//! messages, or `{"messages": [...]}`), and its last user message is classified with the
//! turns before it, as `POST /classify` does.

use semroute::offline::conversations::Scored;
use semroute::offline::eval::Sample;
use semroute::route::Classification;
use semroute::{Encoder, Router};

/// The conversation in `line`, classified; the error says what is wrong with the input.
pub fn classify(
    router: &Router,
    encoder: &Encoder,
    line: &str,
) -> Result<(String, Classification), String> {
    let value: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| format!("with --messages each input is a JSON list of messages: {e}"))?;
    let messages = match &value {
        serde_json::Value::Array(list) => list,
        serde_json::Value::Object(map) => match map.get("messages") {
            Some(serde_json::Value::Array(list)) => list,
            _ => return Err("`messages` must be a list of chat messages".into()),
        },
        _ => return Err("with --messages each input is a JSON list of messages".into()),
    };
    let (earlier, last) = semroute::route::split_chat(messages)
        .filter(|(_, last)| semroute::embed::has_visible_text(last))
        .ok_or("the messages need a user message with visible text to route by")?;
    let sample = Sample {
        text: last.into_owned(),
        earlier: earlier
            .into_iter()
            .map(|m| (m.speaker, m.text.into_owned()))
            .collect(),
        ..Sample::default()
    };
    let samples = [sample];
    let params = router.config().conversation;
    let scored = Scored::new(router, encoder, &samples, &params).map_err(|e| e.to_string())?;
    let [sample] = samples;
    scored
        .classify(router, std::slice::from_ref(&sample), &params)
        .pop()
        .map(|c| (sample.text, c))
        .ok_or_else(|| "nothing was classified".to_string())
}
