//! A compiled set of regexes (route keywords and patterns) that answers "which of them match
//! this text?" fast on any text, and the one place they are compiled, so `validate` refuses
//! exactly what `serve` would.
//!
//! Why two stages: a `RegexSet` with Unicode word boundaries (`\b`, which every keyword
//! and most patterns use) cannot run on its DFA once the text holds a non-ASCII byte, and
//! falls back to an NFA simulation: 30 MiB of non-ASCII text took 30 s. So each rule is
//! compiled twice: once with its word-boundary assertions removed (a superset of what it
//! matches, which the DFA runs at hundreds of MB/s on any text) into one set that names
//! the candidates, and once as written, run alone (with its literal prefilter) on the
//! candidates only. The answer is exactly the rules whose regex matches.

use regex::{Regex, RegexSet};
use regex_syntax::hir::{Hir, HirKind, Look};

/// Rules that compile to more than this are refused (the regex crate's default).
pub const SIZE_LIMIT: usize = 10 * (1 << 20);

/// The compiled rules, in the order given.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    /// Relaxed rules (word boundaries removed); `None` when there are no rules.
    candidates: Option<RegexSet>,
    /// Each rule as written.
    exact: Vec<Regex>,
    /// How each candidate is confirmed.
    confirm: Vec<Confirm>,
}

/// How a rule the candidate set names is confirmed.
#[derive(Debug, Clone)]
enum Confirm {
    /// The rule has no word boundary: the candidate set's answer is exact.
    Already,
    /// Run the exact regex over the whole text.
    Whole,
    /// The rule's matches are at most `max_len` bytes: run the exact regex only next to
    /// each match of its relaxed form (every exact match lies within `max_len` bytes of
    /// the start of one), so text full of near misses costs little.
    Near { relaxed: Regex, max_len: usize },
}

/// Longest match for which `Confirm::Near` is used.
const NEAR_MAX_LEN: usize = 1024;

/// Why a rule set did not compile: the first rule at fault and the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleError {
    pub index: usize,
    pub reason: String,
}

impl RuleSet {
    /// Compiles `sources` (regex syntax) with the same size limit everywhere.
    pub fn new(sources: &[String]) -> Result<RuleSet, RuleError> {
        let mut exact = Vec::with_capacity(sources.len());
        let mut relaxed_sources = Vec::with_capacity(sources.len());
        let mut confirm = Vec::with_capacity(sources.len());
        for (index, source) in sources.iter().enumerate() {
            let fail = |err: &regex::Error| RuleError {
                index,
                reason: regex_reason(err),
            };
            let regex = regex::RegexBuilder::new(source)
                .size_limit(SIZE_LIMIT)
                .build()
                .map_err(|e| fail(&e))?;
            let (loose, how) = match relax(source) {
                Some(Relaxed {
                    source: loose,
                    changed: true,
                    max_len: Some(max_len),
                }) if max_len <= NEAR_MAX_LEN => {
                    let relaxed = regex::RegexBuilder::new(&loose)
                        .size_limit(SIZE_LIMIT)
                        .build()
                        .map_err(|e| fail(&e))?;
                    (loose, Confirm::Near { relaxed, max_len })
                }
                Some(Relaxed {
                    source: loose,
                    changed: true,
                    ..
                }) => (loose, Confirm::Whole),
                _ => (source.clone(), Confirm::Already),
            };
            relaxed_sources.push(loose);
            confirm.push(how);
            exact.push(regex);
        }
        let candidates = if sources.is_empty() {
            None
        } else {
            Some(build_set(&relaxed_sources).map_err(|reason| RuleError {
                index: first_too_large(&relaxed_sources),
                reason,
            })?)
        };
        Ok(RuleSet {
            candidates,
            exact,
            confirm,
        })
    }

    pub fn len(&self) -> usize {
        self.exact.len()
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty()
    }

    /// The indexes of the rules that match `text`, ascending.
    pub fn matches(&self, text: &str) -> Vec<usize> {
        let Some(set) = &self.candidates else {
            return Vec::new();
        };
        set.matches(text)
            .into_iter()
            .filter(|&i| self.confirmed(i, text))
            .collect()
    }

    /// Whether rule `i`, a candidate for `text`, matches it.
    fn confirmed(&self, i: usize, text: &str) -> bool {
        let exact = &self.exact[i];
        match &self.confirm[i] {
            Confirm::Already => true,
            Confirm::Whole => exact.is_match(text),
            Confirm::Near { relaxed, max_len } => relaxed.find_iter(text).any(|near| {
                // The window reaches a little past the longest match, so a match found in it
                // has the character after it to decide its word boundary; `find_at` sees the
                // text before the window for the one before.
                let mut end = (near.end() + max_len + 4).min(text.len());
                while !text.is_char_boundary(end) {
                    end += 1;
                }
                exact
                    .find_at(&text[..end], near.start())
                    .is_some_and(|found| found.end() < end || end == text.len())
            }),
        }
    }
}

fn build_set(sources: &[String]) -> Result<RegexSet, String> {
    regex::RegexSetBuilder::new(sources)
        .size_limit(SIZE_LIMIT)
        .build()
        .map_err(|err| regex_reason(&err))
}

/// The first `k` such that the first `k + 1` sources no longer compile together (binary
/// search; only on the error path).
fn first_too_large(sources: &[String]) -> usize {
    let (mut ok, mut bad) = (0usize, sources.len());
    while bad - ok > 1 {
        let mid = (ok + bad) / 2;
        if build_set(&sources[..mid]).is_ok() {
            ok = mid;
        } else {
            bad = mid;
        }
    }
    bad.saturating_sub(1)
}

/// The last line of the regex crate's message (the earlier ones repeat the pattern).
fn regex_reason(err: &regex::Error) -> String {
    let text = err.to_string();
    let last = text.lines().last().unwrap_or("").trim();
    last.strip_prefix("error: ").unwrap_or(last).to_string()
}

/// A rule with its Unicode word-boundary assertions removed.
struct Relaxed {
    source: String,
    /// Whether there was any to remove.
    changed: bool,
    /// The longest match in bytes, when bounded.
    max_len: Option<usize>,
}

/// `source` with every Unicode word-boundary assertion removed: it matches everything the
/// original does (and more). `None` when it does not parse (the exact compile reports it).
fn relax(source: &str) -> Option<Relaxed> {
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(source)
        .ok()?;
    let max_len = hir.properties().maximum_len();
    let mut changed = false;
    let relaxed = strip_word_boundaries(hir, &mut changed);
    Some(Relaxed {
        source: relaxed.to_string(),
        changed,
        max_len,
    })
}

fn strip_word_boundaries(hir: Hir, changed: &mut bool) -> Hir {
    match hir.into_kind() {
        HirKind::Look(look) if is_unicode_word_look(look) => {
            *changed = true;
            Hir::empty()
        }
        HirKind::Look(look) => Hir::look(look),
        HirKind::Empty => Hir::empty(),
        HirKind::Literal(lit) => Hir::literal(lit.0),
        HirKind::Class(class) => Hir::class(class),
        HirKind::Repetition(mut rep) => {
            let sub = std::mem::replace(&mut rep.sub, Box::new(Hir::empty()));
            rep.sub = Box::new(strip_word_boundaries(*sub, changed));
            Hir::repetition(rep)
        }
        HirKind::Capture(mut cap) => {
            let sub = std::mem::replace(&mut cap.sub, Box::new(Hir::empty()));
            cap.sub = Box::new(strip_word_boundaries(*sub, changed));
            Hir::capture(cap)
        }
        HirKind::Concat(subs) => Hir::concat(
            subs.into_iter()
                .map(|h| strip_word_boundaries(h, changed))
                .collect(),
        ),
        HirKind::Alternation(subs) => Hir::alternation(
            subs.into_iter()
                .map(|h| strip_word_boundaries(h, changed))
                .collect(),
        ),
    }
}

fn is_unicode_word_look(look: Look) -> bool {
    matches!(
        look,
        Look::WordUnicode
            | Look::WordUnicodeNegate
            | Look::WordStartUnicode
            | Look::WordEndUnicode
            | Look::WordStartHalfUnicode
            | Look::WordEndHalfUnicode
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(sources: &[&str]) -> RuleSet {
        let owned: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
        RuleSet::new(&owned).unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn matches_are_exactly_the_rules_whose_regex_matches() {
        let rules = set(&[
            r"(?i)\bbill\b",
            r"\b\d{3}-\d{2}-\d{4}\b",
            "café",
            r"\bnaïve\b",
        ]);
        // Word boundaries still hold: `bill` is not in `billing`, nor `na` in `naïve`.
        assert_eq!(rules.matches("the billing team"), Vec::<usize>::new());
        assert_eq!(rules.matches("my BILL, please"), [0]);
        assert_eq!(rules.matches("ssn 123-45-6789 and a café"), [1, 2]);
        assert_eq!(rules.matches("quelle naïve idée"), [3]);
        assert_eq!(rules.matches("unnaïve"), Vec::<usize>::new());
        // Non-ASCII neighbours are word characters for `\b`, as in the regex itself.
        assert_eq!(rules.matches("éé123-45-6789"), Vec::<usize>::new());
    }

    #[test]
    fn relaxing_removes_only_word_boundaries() {
        let relaxed = relax(r"\bab\b").map(|r| (r.source, r.changed, r.max_len));
        let (source, changed, max_len) = relaxed.unwrap_or_default();
        assert!(!source.contains("\\b") && source.contains("ab"), "{source}");
        assert!(changed);
        assert_eq!(max_len, Some(2));
        assert!(relax("a[0-9]+").is_some_and(|r| !r.changed && r.max_len.is_none()));
        let rules = set(&["^start", r"end$"]);
        assert_eq!(rules.matches("start ... end"), [0, 1]);
        assert_eq!(rules.matches("x start"), Vec::<usize>::new());
    }

    #[test]
    fn a_large_non_ascii_text_is_scanned_quickly_and_exactly() {
        let text = "Привет мир, 你好 ".repeat(200_000) + " 123-45-6789";
        let rules = set(&[r"(?i)\bpython\b", r"\b\d{3}-\d{2}-\d{4}\b"]);
        assert_eq!(rules.matches(&text), [1]);
    }

    #[test]
    fn confirming_near_the_prefilters_matches_agrees_with_the_whole_regex() {
        let patterns = [
            r"\b(?:\d[ -]?){13,16}\b",
            r"\b\d{3}-\d{2}-\d{4}\b",
            r"(?i)\bbill\b",
            r"\bsk-[A-Za-z0-9]{20,}\b",
        ];
        let owned: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        let rules = RuleSet::new(&owned).unwrap_or_else(|e| panic!("{e:?}"));
        let pieces = [
            "é1234567890123456",
            " 1234 5678 1234 5678 ",
            "123-45-6789",
            "x123-45-6789",
            "bill",
            "billé",
            "ébill",
            " sk-abcdefghijklmnopqrstu ",
            "ésk-abcdefghijklmnopqrstuvwx",
            "Привет",
            " ",
            "-",
            "9",
        ];
        // Every text of up to three pieces: the set's answer is the regexes' own.
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    let text = format!("{a}{b}{c}");
                    let expected: Vec<usize> = (0..patterns.len())
                        .filter(|&i| Regex::new(patterns[i]).is_ok_and(|r| r.is_match(&text)))
                        .collect();
                    assert_eq!(rules.matches(&text), expected, "{text:?}");
                }
            }
        }
    }

    #[test]
    fn a_bad_rule_is_named_by_its_index() {
        let owned = vec!["ok".to_string(), "(".to_string()];
        let err = RuleSet::new(&owned)
            .err()
            .unwrap_or_else(|| panic!("accepted"));
        assert_eq!(err.index, 1);
        assert!(err.reason.contains("unclosed group"), "{}", err.reason);
    }

    #[test]
    fn rules_too_large_together_are_refused_at_the_rule_that_tips_the_set_over() {
        // Each compiles alone (Unicode `\w` is large); seven together pass the limit.
        let many: Vec<String> = (0..10).map(|_| r"\w{1,30}".to_string()).collect();
        let err = RuleSet::new(&many)
            .err()
            .unwrap_or_else(|| panic!("accepted"));
        assert_eq!(err.index, 6, "{err:?}");
        assert!(err.reason.contains("size limit"), "{}", err.reason);
    }
}
