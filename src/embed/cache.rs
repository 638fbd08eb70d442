//! The utterance embedding cache: a restart with unchanged routes reads the utterances'
//! embeddings from disk instead of running the model. Entries are keyed by the SHA-256 of
//! the text, and each file belongs to one model: its name carries a hash of the weights'
//! SHA-256, the precision, the backend and the truncation length, so a different model
//! never reads another's vectors. The cache is an optimisation only: any problem with it
//! is logged and the embeddings are computed instead.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"SRCACHE1";

pub type TextKey = [u8; 32];

pub fn text_key(text: &str) -> TextKey {
    Sha256::digest(text.as_bytes()).into()
}

/// The SHA-256 of a file, hex-encoded.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The directory caches go in: `SEMROUTE_CACHE_DIR` (`off` disables caching), else
/// `$XDG_CACHE_HOME/semroute`, else `~/.cache/semroute`.
pub fn default_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("SEMROUTE_CACHE_DIR") {
        return (!dir.is_empty() && dir != "off").then(|| PathBuf::from(dir));
    }
    if let Ok(dir) = std::env::var("XDG_CACHE_HOME")
        && !dir.is_empty()
    {
        return Some(PathBuf::from(dir).join("semroute"));
    }
    std::env::var("HOME")
        .ok()
        .map(|home| PathBuf::from(home).join(".cache/semroute"))
}

pub struct EmbeddingCache {
    path: PathBuf,
    dim: usize,
    entries: HashMap<TextKey, Vec<f32>>,
}

impl EmbeddingCache {
    /// Opens (or starts) the cache for the model identified by `model_key` in `dir`.
    pub fn open(dir: &Path, model_key: &str, dim: usize) -> EmbeddingCache {
        let name = hex::encode(&Sha256::digest(model_key.as_bytes())[..8]);
        let path = dir.join(format!("embeddings-{name}.bin"));
        let entries = match std::fs::read(&path) {
            Ok(bytes) => parse(&bytes, dim).unwrap_or_else(|| {
                tracing::warn!(path = %path.display(), "ignoring an unreadable embedding cache");
                HashMap::new()
            }),
            Err(_) => HashMap::new(),
        };
        EmbeddingCache { path, dim, entries }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, key: &TextKey) -> Option<&[f32]> {
        self.entries.get(key).map(Vec::as_slice)
    }

    /// Replaces the file's contents with exactly `entries` (the current utterances), written
    /// to a temporary file and renamed, so a crash never leaves a torn cache.
    pub fn store(&mut self, entries: HashMap<TextKey, Vec<f32>>) -> std::io::Result<()> {
        self.entries = entries;
        let mut bytes = Vec::with_capacity(20 + self.entries.len() * (32 + 4 * self.dim));
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(self.dim as u32).to_le_bytes());
        bytes.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for (key, vector) in &self.entries {
            bytes.extend_from_slice(key);
            for v in vector {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
        write_atomically(&self.path, &bytes)
    }
}

/// Writes `bytes` to a temporary file beside `path` and renames it over `path`, so a crash
/// never leaves a torn file.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

const HEAD_MAGIC: &[u8; 8] = b"SRHEAD01";

/// The learned head's cache: one file per model, holding the head trained on one set of
/// utterances, identified by a `content` key the caller derives from them.
pub struct HeadCache {
    path: PathBuf,
}

impl HeadCache {
    pub fn open(dir: &Path, model_key: &str) -> HeadCache {
        let name = hex::encode(&Sha256::digest(model_key.as_bytes())[..8]);
        HeadCache {
            path: dir.join(format!("head-{name}.bin")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored bytes, if the file holds the head for `content`.
    pub fn load(&self, content: &[u8; 32]) -> Option<Vec<u8>> {
        let bytes = std::fs::read(&self.path).ok()?;
        let body = bytes.strip_prefix(HEAD_MAGIC)?.strip_prefix(content)?;
        Some(body.to_vec())
    }

    pub fn store(&self, content: &[u8; 32], head: &[u8]) -> std::io::Result<()> {
        let mut bytes = Vec::with_capacity(40 + head.len());
        bytes.extend_from_slice(HEAD_MAGIC);
        bytes.extend_from_slice(content);
        bytes.extend_from_slice(head);
        write_atomically(&self.path, &bytes)
    }
}

fn parse(bytes: &[u8], dim: usize) -> Option<HashMap<TextKey, Vec<f32>>> {
    let header = bytes.get(..20)?;
    if &header[..8] != MAGIC || u32::from_le_bytes(header[8..12].try_into().ok()?) as usize != dim {
        return None;
    }
    let count = u64::from_le_bytes(header[12..20].try_into().ok()?) as usize;
    let entry = 32 + 4 * dim;
    let body = bytes.get(20..)?;
    if body.len() != count.checked_mul(entry)? {
        return None;
    }
    let mut entries = HashMap::with_capacity(count);
    for chunk in body.chunks_exact(entry) {
        let key: TextKey = chunk[..32].try_into().ok()?;
        let vector: Vec<f32> = chunk[32..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if vector.iter().any(|v| !v.is_finite()) {
            return None;
        }
        entries.insert(key, vector);
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_stored_is_read_back_by_the_same_model_only() {
        let dir = std::env::temp_dir().join(format!("semroute-cache-test-{}", std::process::id()));
        let mut cache = EmbeddingCache::open(&dir, "model-a", 3);
        assert!(cache.is_empty());
        let mut entries = HashMap::new();
        entries.insert(text_key("hello"), vec![0.6, 0.8, 0.0]);
        cache.store(entries).unwrap_or_else(|e| panic!("{e}"));
        let again = EmbeddingCache::open(&dir, "model-a", 3);
        assert_eq!(again.get(&text_key("hello")), Some(&[0.6, 0.8, 0.0][..]));
        assert_eq!(again.get(&text_key("other")), None);
        assert!(EmbeddingCache::open(&dir, "model-b", 3).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_stored_head_is_read_back_for_the_same_content_only() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let cache = HeadCache::open(dir.path(), "model-a");
        assert_eq!(cache.load(&[1; 32]), None);
        cache
            .store(&[1; 32], b"weights")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cache.load(&[1; 32]).as_deref(), Some(&b"weights"[..]));
        assert_eq!(cache.load(&[2; 32]), None);
        assert_eq!(HeadCache::open(dir.path(), "model-b").load(&[1; 32]), None);
    }

    #[test]
    fn a_damaged_file_is_ignored() {
        assert!(parse(b"SRCACHE1\x03\x00\x00\x00", 3).is_none());
        assert!(parse(b"garbage", 3).is_none());
        let mut ok = Vec::new();
        ok.extend_from_slice(MAGIC);
        ok.extend_from_slice(&1u32.to_le_bytes());
        ok.extend_from_slice(&1u64.to_le_bytes());
        ok.extend_from_slice(&[7u8; 32]);
        ok.extend_from_slice(&1.0f32.to_le_bytes());
        assert_eq!(parse(&ok, 1).map(|m| m.len()), Some(1));
        assert!(parse(&ok[..ok.len() - 1], 1).is_none(), "truncated");
        assert!(parse(&ok, 2).is_none(), "other dimension");
    }
}
