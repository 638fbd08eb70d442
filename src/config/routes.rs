//! The `routes:` section: each route's name, utterances, keywords, patterns, threshold and
//! dispatch settings, unique names, the `default_route`, and that every route but the
//! default has something to match on.

use super::raw::RawRoute;
use super::{
    Backend, Checker, ConfigIssue, DataClasses, Keyword, Pattern, Route, RouteId, RouteName,
};
use serde_saphyr::Spanned;
use std::collections::HashMap;

impl Checker<'_> {
    /// Every route, each name used once (`None` if any route is invalid).
    pub(super) fn routes(
        &mut self,
        raw: Spanned<Vec<RawRoute>>,
        backends: Option<&[Backend]>,
        classes: &DataClasses,
    ) -> Option<Vec<Route>> {
        if raw.value.is_empty() {
            self.issue(
                "routes".into(),
                raw.referenced,
                "there are no routes".into(),
                "add at least one route with a `name` and `utterances`",
            );
            return None;
        }
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut routes = Vec::with_capacity(raw.value.len());
        let mut all_valid = true;
        for (i, raw_route) in raw.value.into_iter().enumerate() {
            let at = format!("routes[{i}]");
            let name = &raw_route.name;
            if let Some(first_line) = seen.get(&name.value) {
                self.issue(
                    format!("{at}.name"),
                    name.referenced,
                    format!(
                        "route name `{}` is already used (line {first_line})",
                        name.value
                    ),
                    "give every route a unique name, or merge the two routes' utterances",
                );
                all_valid = false;
            } else {
                seen.insert(name.value.clone(), name.referenced.line());
            }
            match self.route(&at, raw_route, backends, classes) {
                Some(route) => routes.push(route),
                None => all_valid = false,
            }
        }
        all_valid &= self.experiments_unique(&routes);
        all_valid.then_some(routes)
    }

    /// Each experiment name used by one route (its counters are kept by name).
    fn experiments_unique(&mut self, routes: &[Route]) -> bool {
        let mut seen: HashMap<&str, &str> = HashMap::new();
        let mut valid = true;
        for (i, route) in routes.iter().enumerate() {
            let Some(experiment) = &route.dispatch.experiment else {
                continue;
            };
            if let Some(first) = seen.insert(&experiment.name, route.name.as_str()) {
                self.issue(
                    format!("routes[{i}].experiment.name"),
                    serde_saphyr::Location::UNKNOWN,
                    format!(
                        "experiment `{}` is already run by route `{first}`",
                        experiment.name
                    ),
                    "give each route's experiment its own name",
                );
                valid = false;
            }
        }
        valid
    }

    /// One route, with every problem in it reported (`None` if there is any).
    fn route(
        &mut self,
        at: &str,
        raw: RawRoute,
        backends: Option<&[Backend]>,
        classes: &DataClasses,
    ) -> Option<Route> {
        // Every step reports its own problems, so all of them run before any result is used.
        let name = self.route_name(at, &raw.name);
        let dispatch = self.dispatch(at, &raw, backends, classes);
        let utterances = self.utterances(at, raw.utterances);
        let keywords = self.keywords(at, &raw.keywords);
        let patterns = self.patterns(at, &raw.patterns);
        let threshold = match &raw.threshold {
            Some(t) => self.threshold(&format!("{at}.threshold"), t).map(Some),
            None => Some(None),
        };
        Some(Route {
            name: name?,
            line: raw.name.referenced.line(),
            utterances: utterances?,
            keywords: keywords?,
            patterns: patterns?,
            threshold: threshold?,
            dispatch: dispatch?,
            description: raw.description,
            metadata: raw.metadata,
        })
    }

    fn route_name(&mut self, at: &str, raw: &Spanned<String>) -> Option<RouteName> {
        let name = RouteName::new(&raw.value);
        if name.is_none() {
            self.issue(
                format!("{at}.name"),
                raw.referenced,
                "the route name is empty".into(),
                "write a short name such as `billing` or `code`",
            );
        }
        name
    }

    /// The example prompts, none of them blank.
    fn utterances(&mut self, at: &str, raw: Vec<Spanned<String>>) -> Option<Vec<String>> {
        let mut valid = true;
        let mut utterances = Vec::with_capacity(raw.len());
        for (j, utterance) in raw.into_iter().enumerate() {
            if utterance.value.trim().is_empty() {
                self.issue(
                    format!("{at}.utterances[{j}]"),
                    utterance.referenced,
                    "the utterance is empty".into(),
                    "remove it, or write an example prompt this route should receive",
                );
                valid = false;
            }
            utterances.push(utterance.value);
        }
        valid.then_some(utterances)
    }

    /// The keywords, each noted where it was written for the compiled rule set.
    fn keywords(&mut self, at: &str, raw: &[Spanned<String>]) -> Option<Vec<Keyword>> {
        let mut valid = true;
        let mut keywords = Vec::with_capacity(raw.len());
        for (j, keyword) in raw.iter().enumerate() {
            match Keyword::new(&keyword.value) {
                Some(k) => {
                    self.rule_sites
                        .push((format!("{at}.keywords[{j}]"), keyword.referenced));
                    keywords.push(k);
                }
                None => {
                    self.issue(
                        format!("{at}.keywords[{j}]"),
                        keyword.referenced,
                        "the keyword is empty".into(),
                        "remove it, or write a word or phrase that should select this route",
                    );
                    valid = false;
                }
            }
        }
        valid.then_some(keywords)
    }

    /// The patterns, each a regex that compiles alone, noted where it was written.
    fn patterns(&mut self, at: &str, raw: &[Spanned<String>]) -> Option<Vec<Pattern>> {
        let mut valid = true;
        let mut patterns = Vec::with_capacity(raw.len());
        for (j, pattern) in raw.iter().enumerate() {
            match Pattern::new(&pattern.value) {
                Ok(p) => {
                    self.rule_sites
                        .push((format!("{at}.patterns[{j}]"), pattern.referenced));
                    patterns.push(p);
                }
                Err(reason) => {
                    self.issue(
                        format!("{at}.patterns[{j}]"),
                        pattern.referenced,
                        format!("invalid regular expression: {reason}"),
                        "fix the regex (Rust `regex` syntax: no look-around or back-references); escape literal characters such as . ( ) [ ] with a backslash",
                    );
                    valid = false;
                }
            }
        }
        valid.then_some(patterns)
    }

    pub(super) fn default_route(
        &mut self,
        name: &Spanned<String>,
        routes: &[Route],
    ) -> Option<Option<RouteId>> {
        if let Some(i) = routes.iter().position(|r| r.name.as_str() == name.value) {
            return Some(Some(RouteId::new(i)));
        }
        let known: Vec<&str> = routes.iter().take(12).map(|r| r.name.as_str()).collect();
        let more = if routes.len() > known.len() {
            ", ..."
        } else {
            ""
        };
        self.issue(
            "default_route".into(),
            name.referenced,
            format!("`{}` names no route", name.value),
            &format!(
                "write the name of one of the routes ({}{more}), or remove `default_route`",
                known.join(", ")
            ),
        );
        None
    }

    /// Every route but the default needs something to match on.
    pub(super) fn routes_have_examples(&mut self, routes: &[Route], default: Option<RouteId>) {
        for (i, route) in routes.iter().enumerate() {
            let empty = route.utterances.is_empty()
                && route.keywords.is_empty()
                && route.patterns.is_empty();
            if empty && default != Some(RouteId::new(i)) {
                self.issues.push(ConfigIssue {
                    path: format!("routes[{i}]"),
                    line: Some(route.line).filter(|&l| l > 0),
                    message: format!(
                        "route `{}` has no utterances, keywords or patterns, so nothing can select it",
                        route.name
                    ),
                    hint: Some(
                        "add `utterances:` with example prompts (or `keywords:`/`patterns:`), or make it the `default_route`"
                            .into(),
                    ),
                });
            }
        }
    }
}
