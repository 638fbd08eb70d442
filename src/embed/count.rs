//! Token counts for budgets and context windows: the model's own tokenizer (untruncated),
//! never below one token per four bytes (a provider's tokenizer may split finer than
//! WordPiece). A long text is counted exactly for its first [`EXACT_BYTES`] and
//! extrapolated at the same rate beyond, so a 10 MB conversation costs milliseconds.

use std::path::Path;
use std::sync::Arc;
use tokenizers::Tokenizer;

/// Text counted token by token; the rest is extrapolated.
pub const EXACT_BYTES: usize = 256 * 1024;
/// Texts are encoded in pieces of about this size (the tokenizer's memory grows with its
/// input).
const PIECE_BYTES: usize = 16 * 1024;

#[derive(Clone)]
pub struct TokenCounter {
    tokenizer: Arc<Tokenizer>,
}

impl std::fmt::Debug for TokenCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCounter")
    }
}

impl TokenCounter {
    /// Loads `tokenizer.json`.
    pub fn load(path: &Path) -> Result<TokenCounter, String> {
        TokenCounter::new(Tokenizer::from_file(path).map_err(|e| e.to_string())?)
    }

    /// Counts with `tokenizer`, without the truncation an encoder applies.
    pub fn new(mut tokenizer: Tokenizer) -> Result<TokenCounter, String> {
        tokenizer.with_truncation(None).map_err(|e| e.to_string())?;
        tokenizer.with_padding(None);
        Ok(TokenCounter {
            tokenizer: Arc::new(tokenizer),
        })
    }

    /// About how many tokens `text` is for an LLM (see the module's note).
    pub fn count(&self, text: &str) -> u64 {
        let exact_end = floor_boundary(text, EXACT_BYTES);
        let head = &text[..exact_end];
        let mut tokens = 0u64;
        for piece in pieces(head) {
            tokens += self
                .tokenizer
                .encode(piece, false)
                .map_or(piece.len().div_ceil(4), |e| e.len()) as u64;
        }
        let rest = (text.len() - exact_end) as u64;
        if rest > 0 {
            // The rest at the head's rate.
            tokens += (rest as u128 * tokens as u128).div_ceil(exact_end.max(1) as u128) as u64;
        }
        tokens.max(by_bytes(text.len()))
    }
}

/// The floor every count keeps: a token per four bytes.
pub fn by_bytes(len: usize) -> u64 {
    len.div_ceil(4) as u64
}

/// `text` cut into pieces of about `PIECE_BYTES`, at whitespace where there is some, so
/// words are not split.
fn pieces(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        // Never 0: a character is at most four bytes.
        let mut end = floor_boundary(rest, PIECE_BYTES);
        if end < rest.len()
            && let Some(space) = rest[..end].rfind(char::is_whitespace).filter(|&s| s > 0)
        {
            end = space;
        }
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

/// The largest char boundary of `text` at or below `at`.
fn floor_boundary(text: &str, at: usize) -> usize {
    if at >= text.len() {
        return text.len();
    }
    (0..=at)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_text_in_order_at_whitespace() {
        let text = "word ".repeat(10_000) + "é".repeat(20_000).as_str();
        let joined: String = pieces(&text).collect();
        assert_eq!(joined, text);
        assert!(pieces(&text).all(|p| p.len() <= PIECE_BYTES && !p.is_empty()));
        assert_eq!(pieces("").count(), 0);
    }

    #[test]
    fn boundaries_never_split_a_character() {
        let text = "aé€😀";
        for at in 0..=text.len() + 2 {
            let b = floor_boundary(text, at);
            assert!(text.is_char_boundary(b) && b <= at.max(b));
        }
    }
}
