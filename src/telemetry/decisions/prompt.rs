//! A decision's prompt, kept only with `log_prompts` on: the text classified, or a
//! conversation's messages (role and text). Bounded, because the ring keeps a thousand of
//! them and a conversation can be tens of megabytes: at most [`MAX_PROMPT_BYTES`] of text,
//! a conversation's last messages first (the ones its route is decided by).

use serde::Serialize;

/// Most bytes of text a prompt keeps (each text cut at a character boundary).
pub const MAX_PROMPT_BYTES: usize = 16 * 1024;
/// Most messages of a conversation kept (a conversation of many empty messages is bounded
/// too).
pub const MAX_PROMPT_MESSAGES: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Prompt {
    /// `/classify`'s `text`.
    Text(String),
    /// A conversation, oldest message first.
    Messages(Vec<PromptMessage>),
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PromptMessage {
    pub role: String,
    pub content: String,
}

impl Prompt {
    /// `text`, cut to [`MAX_PROMPT_BYTES`].
    pub fn text(text: &str) -> Prompt {
        Prompt::Text(cut(text, MAX_PROMPT_BYTES).to_string())
    }

    /// A conversation's `(role, text)` messages, oldest first: the last ones (at most
    /// [`MAX_PROMPT_MESSAGES`]) that fit in [`MAX_PROMPT_BYTES`], the oldest of them cut to
    /// fit.
    pub fn messages<'a, I>(messages: I) -> Prompt
    where
        I: DoubleEndedIterator<Item = (&'a str, std::borrow::Cow<'a, str>)>,
    {
        let mut room = MAX_PROMPT_BYTES;
        let mut kept = Vec::new();
        for (role, text) in messages.rev().take(MAX_PROMPT_MESSAGES) {
            if room == 0 && !text.is_empty() {
                break;
            }
            let content = cut(&text, room);
            room -= content.len();
            kept.push(PromptMessage {
                role: cut(role, 32).to_string(),
                content: content.to_string(),
            });
            if content.len() < text.len() {
                // Nothing older fits.
                break;
            }
        }
        kept.reverse();
        Prompt::Messages(kept)
    }
}

/// The longest start of `text` of at most `max` bytes that ends on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let end = (0..=max)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn a_long_text_is_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_PROMPT_BYTES);
        let Prompt::Text(kept) = Prompt::text(&long) else {
            panic!("a text stays a text")
        };
        assert_eq!(kept.len(), MAX_PROMPT_BYTES);
        assert!(kept.chars().all(|c| c == 'é'));
        assert_eq!(Prompt::text("short"), Prompt::Text("short".into()));
    }

    #[test]
    fn a_long_conversation_keeps_its_last_messages() {
        let big = "x".repeat(MAX_PROMPT_BYTES / 2);
        let messages = [
            ("system", Cow::Borrowed("be brief")),
            ("user", Cow::Borrowed(big.as_str())),
            ("assistant", Cow::Borrowed(big.as_str())),
            ("user", Cow::Borrowed("and the last one")),
        ];
        let Prompt::Messages(kept) = Prompt::messages(messages.into_iter()) else {
            panic!("messages stay messages")
        };
        let roles: Vec<&str> = kept.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "user"]);
        assert_eq!(kept[2].content, "and the last one");
        let total: usize = kept.iter().map(|m| m.content.len()).sum();
        assert_eq!(total, MAX_PROMPT_BYTES);
        let many = (0..1000).map(|_| ("user", Cow::Borrowed("")));
        let Prompt::Messages(kept) = Prompt::messages(many) else {
            panic!("messages stay messages")
        };
        assert_eq!(kept.len(), MAX_PROMPT_MESSAGES);
    }

    #[test]
    fn a_conversation_serializes_as_a_list_and_a_text_as_a_string() {
        let messages = Prompt::messages([("user", Cow::Borrowed("hi"))].into_iter());
        assert_eq!(
            serde_json::to_string(&messages).ok().as_deref(),
            Some(r#"[{"role":"user","content":"hi"}]"#)
        );
        assert_eq!(
            serde_json::to_string(&Prompt::text("hi")).ok().as_deref(),
            Some(r#""hi""#)
        );
    }
}
