//! Data classes: the sensitivity levels a request can carry and a backend can accept,
//! ordered from least to most sensitive (`public < internal < pii < restricted` unless
//! `data_classes_order` says otherwise). A request's class is the strictest of everything
//! that applies to it, so the order is what makes "strictest" mean something.

use super::Checker;
use serde_saphyr::Spanned;

/// The order used when the config gives none.
pub const DEFAULT_ORDER: [&str; 4] = ["public", "internal", "pii", "restricted"];

/// The known classes, least sensitive first.
#[derive(Debug, Clone, PartialEq)]
pub struct DataClasses {
    order: Vec<String>,
    /// Whether the config mentions data classes at all (an order, a backend's list or a
    /// route's class). Only then does a backend without a list accept just the lowest.
    in_use: bool,
}

impl Default for DataClasses {
    fn default() -> Self {
        DataClasses {
            order: DEFAULT_ORDER.iter().map(|c| c.to_string()).collect(),
            in_use: false,
        }
    }
}

impl DataClasses {
    /// Where `class` stands in the order (0: least sensitive); `None` if unknown.
    pub fn rank(&self, class: &str) -> Option<usize> {
        self.order.iter().position(|c| c == class)
    }

    /// The least sensitive class.
    pub fn lowest(&self) -> &str {
        self.order.first().map_or("public", String::as_str)
    }

    pub fn names(&self) -> &[String] {
        &self.order
    }

    pub fn in_use(&self) -> bool {
        self.in_use
    }

    /// "public < internal < ...", for messages.
    pub fn describe(&self) -> String {
        self.order.join(" < ")
    }

    /// The stricter of two known classes (the first when equal or either is unknown).
    pub fn stricter<'a>(&self, a: &'a str, b: &'a str) -> &'a str {
        match (self.rank(a), self.rank(b)) {
            (Some(x), Some(y)) if y > x => b,
            _ => a,
        }
    }
}

/// Which classes a backend may receive, as validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    /// The config uses no data classes: every request.
    Any,
    /// Only these (a backend without `data_classes` in a config that uses classes gets the
    /// lowest class alone).
    Only(Vec<String>),
}

impl Checker<'_> {
    /// The order, from `data_classes_order` or the default; `in_use` is whether any class
    /// appears anywhere in the file.
    pub(super) fn data_classes(
        &mut self,
        raw: Option<Spanned<Vec<Spanned<String>>>>,
        in_use: bool,
    ) -> Option<DataClasses> {
        let Some(raw) = raw else {
            return Some(DataClasses {
                in_use,
                ..DataClasses::default()
            });
        };
        if raw.value.is_empty() {
            self.issue(
                "data_classes_order".into(),
                raw.referenced,
                "the order lists no classes".into(),
                "list the classes from least to most sensitive, e.g. [public, internal, pii, restricted], or remove the key",
            );
            return None;
        }
        let mut order: Vec<String> = Vec::with_capacity(raw.value.len());
        let mut valid = true;
        for (i, class) in raw.value.iter().enumerate() {
            let name = class.value.trim();
            let problem = if name.is_empty() {
                Some("the class name is empty".to_string())
            } else if order.iter().any(|c| c == name) {
                Some(format!("`{name}` is listed twice"))
            } else {
                None
            };
            if let Some(problem) = problem {
                self.issue(
                    format!("data_classes_order[{i}]"),
                    class.referenced,
                    problem,
                    "list each class once, from least to most sensitive",
                );
                valid = false;
            }
            order.push(name.to_string());
        }
        valid.then_some(DataClasses {
            order,
            in_use: true,
        })
    }

    /// A class named at `path`, checked against the order.
    pub(super) fn known_class(
        &mut self,
        path: String,
        raw: &Spanned<String>,
        classes: &DataClasses,
    ) -> Option<String> {
        let name = raw.value.trim();
        if classes.rank(name).is_some() {
            return Some(name.to_string());
        }
        self.issue(
            path,
            raw.referenced,
            format!(
                "unknown data class `{name}`; the classes are {}",
                classes.describe()
            ),
            "use one of them, or list every class in `data_classes_order` (least sensitive first)",
        );
        None
    }
}
