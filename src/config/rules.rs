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
    /// Whether the relaxed form of each rule differs from the exact one.
    relaxed: Vec<bool>,
}

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
        let mut relaxed = Vec::with_capacity(sources.len());
        for (index, source) in sources.iter().enumerate() {
            let regex = regex::RegexBuilder::new(source)
                .size_limit(SIZE_LIMIT)
                .build()
                .map_err(|err| RuleError {
                    index,
                    reason: regex_reason(&err),
                })?;
            let loose = relax(source).unwrap_or_else(|| source.clone());
            relaxed.push(loose != *source);
            relaxed_sources.push(loose);
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
            relaxed,
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
            .filter(|&i| !self.relaxed[i] || self.exact[i].is_match(text))
            .collect()
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

/// `source` with every Unicode word-boundary assertion removed: it matches everything the
/// original does (and more). `None` when it does not parse (the exact compile reports it).
fn relax(source: &str) -> Option<String> {
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(source)
        .ok()?;
    let relaxed = strip_word_boundaries(hir);
    Some(relaxed.to_string())
}

fn strip_word_boundaries(hir: Hir) -> Hir {
    match hir.into_kind() {
        HirKind::Look(look) if is_unicode_word_look(look) => Hir::empty(),
        HirKind::Look(look) => Hir::look(look),
        HirKind::Empty => Hir::empty(),
        HirKind::Literal(lit) => Hir::literal(lit.0),
        HirKind::Class(class) => Hir::class(class),
        HirKind::Repetition(mut rep) => {
            let sub = std::mem::replace(&mut rep.sub, Box::new(Hir::empty()));
            rep.sub = Box::new(strip_word_boundaries(*sub));
            Hir::repetition(rep)
        }
        HirKind::Capture(mut cap) => {
            let sub = std::mem::replace(&mut cap.sub, Box::new(Hir::empty()));
            cap.sub = Box::new(strip_word_boundaries(*sub));
            Hir::capture(cap)
        }
        HirKind::Concat(subs) => Hir::concat(subs.into_iter().map(strip_word_boundaries).collect()),
        HirKind::Alternation(subs) => {
            Hir::alternation(subs.into_iter().map(strip_word_boundaries).collect())
        }
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
        let relaxed = relax(r"\bab\b").unwrap_or_default();
        assert!(
            !relaxed.contains("\\b") && relaxed.contains("ab"),
            "{relaxed}"
        );
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
