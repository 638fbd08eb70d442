//! What of a prompt the model sees. `Truncator::prefix` cuts a text to the part that
//! truncation to `max_tokens` keeps, without tokenizing the rest (a 30 MiB prompt used to
//! be tokenized whole, with per-byte offsets, before all but 256 tokens were thrown away),
//! and `has_visible_text` tells a prompt from one of only invisible characters.

use std::sync::Arc;
use tokenizers::Tokenizer;

/// The first window tried, in bytes per token kept; it grows fourfold until the prefix
/// holds enough tokens.
const BYTES_PER_TOKEN: usize = 16;

/// Cuts texts to what the model's truncation keeps.
#[derive(Clone)]
pub struct Truncator {
    tokenizer: Arc<Tokenizer>,
    max_tokens: usize,
}

impl Truncator {
    /// `tokenizer` must truncate to `max_tokens` (special tokens included).
    pub fn new(tokenizer: Arc<Tokenizer>, max_tokens: usize) -> Truncator {
        Truncator {
            tokenizer,
            max_tokens,
        }
    }

    /// The shortest prefix of `text`, cut at whitespace, that still yields the `max_tokens`
    /// tokens the whole text would be truncated to (the whole text when it is shorter).
    /// Cutting at whitespace keeps the tokens a prefix of the whole text's tokens, since
    /// BERT's tokenizer splits words at whitespace first. A single "word" longer than the
    /// window is cut inside it; beyond 100 characters WordPiece makes it `[UNK]` either way.
    pub fn prefix<'a>(&self, text: &'a str) -> &'a str {
        let mut window = self.max_tokens.max(1).saturating_mul(BYTES_PER_TOKEN);
        loop {
            if window >= text.len() {
                return text;
            }
            let cut = cut_at_whitespace(text, window);
            let candidate = &text[..cut];
            match self.tokenizer.encode(candidate, true) {
                Ok(encoding) if encoding.get_ids().len() >= self.max_tokens => return candidate,
                Ok(_) => {}
                // Let the encoder report it on the whole text's prefix it would see anyway.
                Err(_) => return candidate,
            }
            window = window.saturating_mul(4);
        }
    }
}

/// A cut at or before byte `at`: just before the last whitespace character there, else (one
/// long word) at the last character boundary.
fn cut_at_whitespace(text: &str, at: usize) -> usize {
    let mut end = at.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    match text[..end].rfind(char::is_whitespace) {
        Some(space) if space > 0 => space,
        _ => end,
    }
}

/// Whether `text` has any character that shows: not whitespace, not a control character,
/// not an invisible format character (zero-width spaces and joiners, direction marks, BOM,
/// tags, variation selectors) nor a blank filler (Hangul fillers, braille blank).
pub fn has_visible_text(text: &str) -> bool {
    text.chars().any(|c| !is_invisible(c))
}

fn is_invisible(c: char) -> bool {
    c.is_whitespace() || c.is_control() || is_hidden(c)
}

/// A character that takes no space and shows nothing (format characters such as
/// zero-width spaces, joiners, direction marks, soft hyphens, BOM, tags, variation
/// selectors, and blank fillers), though it is neither whitespace nor a control character.
pub fn is_hidden(c: char) -> bool {
    matches!(c,
            '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}'
            | '\u{17B5}' | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{2800}' | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_characters_alone_are_not_text() {
        for blank in [
            "",
            " \n\t",
            "\0\0",
            "\u{200B}\u{200C}\u{200D}\u{FEFF}",
            "\u{2060}\u{3164}\u{E0041}",
        ] {
            assert!(!has_visible_text(blank), "{blank:?}");
        }
        for text in ["a", "\u{200B}hi", "é", "你好", "🙂"] {
            assert!(has_visible_text(text), "{text:?}");
        }
    }

    #[test]
    fn cuts_fall_before_whitespace_and_on_character_boundaries() {
        assert_eq!(cut_at_whitespace("hello world again", 13), 11);
        assert_eq!(cut_at_whitespace("ééééé", 3), 2);
        assert_eq!(cut_at_whitespace("abc", 10), 3);
    }
}
