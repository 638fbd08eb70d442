//! The layering ARCHITECTURE.md describes, checked: each layer's files may name only the
//! layers below it. A `use` that breaks the rule fails this test, not a code review.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Each layer (a directory or file under `src/`) and the layers it may use besides itself.
const ALLOWED: &[(&str, &[&str])] = &[
    ("kernels", &[]),
    ("config", &[]),
    ("telemetry.rs", &[]),
    ("embed", &["config", "kernels"]),
    ("route", &["config", "embed", "kernels"]),
    ("quota", &["config", "telemetry"]),
    ("experiment", &["config", "quota", "telemetry"]),
    ("cache", &["config", "quota"]),
    (
        "dispatch",
        &[
            "config",
            "embed",
            "quota",
            "experiment",
            "telemetry",
            "error",
        ],
    ),
    ("error.rs", &["config", "embed", "route", "dispatch"]),
    ("offline", &["config", "embed", "kernels", "route"]),
    (
        "http",
        &[
            "config",
            "embed",
            "route",
            "quota",
            "experiment",
            "cache",
            "dispatch",
            "telemetry",
            "error",
        ],
    ),
    (
        "serve.rs",
        &[
            "config",
            "embed",
            "route",
            "quota",
            "experiment",
            "cache",
            "dispatch",
            "telemetry",
            "error",
            "http",
        ],
    ),
];

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        entries.sort();
        for entry in entries {
            rust_files(&entry, out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

/// The crate's top-level modules a source text names (`crate::x`, `$crate::x`).
fn layers_named(text: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            named.insert(name);
        }
    }
    named
}

#[test]
fn every_layer_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for (layer, allowed) in ALLOWED {
        let mut files = Vec::new();
        rust_files(&src.join(layer), &mut files);
        // A file module's children live in the directory of its name.
        if let Some(stem) = layer.strip_suffix(".rs") {
            rust_files(&src.join(stem), &mut files);
        }
        assert!(!files.is_empty(), "layer {layer} has no files");
        let own = layer.trim_end_matches(".rs");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            for name in layers_named(&text) {
                let name = match name.as_str() {
                    // The kernels' exported macro and the crate root's re-exports.
                    "simd_fn" => "kernels".to_string(),
                    "Config" => "config".to_string(),
                    "Router" | "Classification" => "route".to_string(),
                    "Embedding" | "Encoder" => "embed".to_string(),
                    _ => name,
                };
                let ok = name == own
                    || allowed
                        .iter()
                        .any(|a| a.trim_end_matches(".rs") == name.as_str());
                if !ok {
                    violations.push(format!("{} uses crate::{name}", file.display()));
                }
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn the_check_sees_a_forbidden_use() {
    let named =
        layers_named("use crate::http::AppState;\nlet x = $crate::kernels::vector::level();");
    assert!(named.contains("http") && named.contains("kernels"));
}
