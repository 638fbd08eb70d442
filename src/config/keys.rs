//! `auth:`: the client keys and what each may reach (routes, backends, a data class) and
//! spend (its limits). A key is never held in clear text: it is read from its variable at
//! load and kept as its SHA-256 only.

use super::raw::{RawAuth, RawClientKey};
use super::tenants::{Limits, valid_prefix};
use super::{Backend, BackendId, Checker, DataClasses, Route, RouteId};
use serde_saphyr::Spanned;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Where a client key comes from, as written (a key is never written in clear text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Env(String),
    Sha256,
}

/// The routes a key may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteAccess {
    /// Whether it may ask for `auto` (a classified route, which must also be listed).
    pub auto: bool,
    pub routes: Vec<RouteId>,
}

/// A client key and what it may reach.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientKey {
    /// Shown in logs and metrics; the key itself never is.
    pub name: String,
    pub source: KeySource,
    /// SHA-256 of the key.
    pub digest: [u8; 32],
    /// `None`: every route and `auto`.
    pub routes: Option<RouteAccess>,
    /// Backends it may name directly; `None`: every one.
    pub backends: Option<Vec<BackendId>>,
    pub max_data_class: Option<String>,
    pub limits: Limits,
    /// May read `GET /v1/usage` from anywhere (others only over loopback).
    pub admin: bool,
}

/// `auth:`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Auth {
    /// Whether a request without a known key is refused (401).
    pub required: bool,
    pub keys: Vec<ClientKey>,
    /// The admin key (`admin_key_env`): it opens `/admin/*` from any address.
    pub admin_key: Option<AdminKey>,
}

/// The key that opens `/admin/*`: the variable it was read from and its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminKey {
    pub env: String,
    pub digest: [u8; 32],
}

/// SHA-256 of a presented key.
pub fn key_digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// The name that stands for callers without a key, in counters, metrics and messages.
pub const NO_KEY: &str = "-";

/// Shorter keys are refused: they can be guessed.
pub const MIN_KEY_LEN: usize = 16;

impl Checker<'_> {
    /// `auth:`, resolved against the routes, backends and classes.
    pub(super) fn auth(
        &mut self,
        raw: Option<RawAuth>,
        routes: &[Route],
        backends: &[Backend],
        classes: &DataClasses,
    ) -> Option<Auth> {
        let Some(raw) = raw else {
            return Some(Auth::default());
        };
        let required = raw.required.unwrap_or(false);
        let mut keys = Vec::with_capacity(raw.keys.len());
        let mut names: HashMap<String, u64> = HashMap::new();
        let mut digests: HashMap<[u8; 32], String> = HashMap::new();
        let mut valid = true;
        for (i, raw) in raw.keys.into_iter().enumerate() {
            let at = format!("auth.keys[{i}]");
            let line = raw.name.referenced.line();
            if let Some(first) = names.insert(raw.name.value.clone(), line) {
                self.issue(
                    format!("{at}.name"),
                    raw.name.referenced,
                    format!(
                        "key name `{}` is already used (line {first})",
                        raw.name.value
                    ),
                    "give every key a unique name",
                );
                valid = false;
            }
            let Some(key) = self.client_key(&at, raw, routes, backends, classes) else {
                valid = false;
                continue;
            };
            if let Some(other) = digests.insert(key.digest, key.name.clone()) {
                self.issue(
                    format!("{at}.name"),
                    serde_saphyr::Location::UNKNOWN,
                    format!("keys `{other}` and `{}` are the same key", key.name),
                    "give every client its own key",
                );
                valid = false;
            }
            keys.push(key);
        }
        if required && keys.is_empty() && valid {
            self.issue(
                "auth.required".into(),
                serde_saphyr::Location::UNKNOWN,
                "`auth.required` is true but no key is listed, so every request would be refused"
                    .into(),
                "list the client keys under `auth.keys`, or set `required: false`",
            );
            valid = false;
        }
        let admin_key = match &raw.admin_key_env {
            Some(env) => match self.key_from_env("auth.admin_key_env".into(), env) {
                Some((_, digest)) if digests.contains_key(&digest) => {
                    self.issue(
                        "auth.admin_key_env".into(),
                        env.referenced,
                        "the admin key is also a client's key".into(),
                        "give the admin key its own value: a client key never opens /admin",
                    );
                    None
                }
                Some((_, digest)) => Some(AdminKey {
                    env: env.value.trim().to_string(),
                    digest,
                }),
                None => {
                    valid = false;
                    None
                }
            },
            None => None,
        };
        if raw.admin_key_env.is_some() && admin_key.is_none() {
            valid = false;
        }
        valid.then_some(Auth {
            required,
            keys,
            admin_key,
        })
    }

    fn client_key(
        &mut self,
        at: &str,
        raw: RawClientKey,
        routes: &[Route],
        backends: &[Backend],
        classes: &DataClasses,
    ) -> Option<ClientKey> {
        // `-` stands for callers without a key (their users' counters are under it).
        let named = valid_prefix(&raw.name.value) && raw.name.value != NO_KEY;
        if !named {
            self.issue(
                format!("{at}.name"),
                raw.name.referenced,
                "a key's name must be 1-64 letters, digits, `_`, `-`, `.` or `:`, and not `-` alone"
                    .into(),
                "write a short name such as `team-search` (shown in logs and metrics)",
            );
        }
        let secret = self.key_secret(at, &raw);
        let route_access = raw
            .routes
            .as_ref()
            .map(|list| self.route_access(at, list, routes));
        let backend_access = raw
            .backends
            .as_ref()
            .map(|list| self.backend_access(at, list, backends));
        let max_class = raw
            .max_data_class
            .as_ref()
            .map(|c| self.known_class(format!("{at}.max_data_class"), c, classes));
        let limits = self.limits_section(&format!("{at}.limits"), raw.limits.as_ref(), true);
        let (source, digest) = secret?;
        if !named {
            return None;
        }
        Some(ClientKey {
            name: raw.name.value,
            source,
            digest,
            routes: route_access.map_or(Some(None), |r| r.map(Some))?,
            backends: backend_access.map_or(Some(None), |b| b.map(Some))?,
            max_data_class: max_class.map_or(Some(None), |c| c.map(Some))?,
            limits: limits?,
            admin: raw.admin.unwrap_or(false),
        })
    }

    /// The key's digest, from its variable (read now) or as written.
    fn key_secret(&mut self, at: &str, raw: &RawClientKey) -> Option<(KeySource, [u8; 32])> {
        match (&raw.key_env, &raw.key_sha256) {
            (Some(env), None) => self.key_from_env(format!("{at}.key_env"), env),
            (None, Some(hex_digest)) => {
                let mut digest = [0u8; 32];
                let text = hex_digest.value.trim();
                if text.len() == 64 && hex::decode_to_slice(text, &mut digest).is_ok() {
                    return Some((KeySource::Sha256, digest));
                }
                self.issue(
                    format!("{at}.key_sha256"),
                    hex_digest.referenced,
                    "this is not a SHA-256 in hex (64 hex digits; the value is not shown)".into(),
                    "write the output of `printf %s \"$KEY\" | sha256sum`, never the key itself",
                );
                None
            }
            _ => {
                self.issue(
                    at.to_string(),
                    raw.name.referenced,
                    format!(
                        "key `{}` needs exactly one of `key_env` and `key_sha256`",
                        raw.name.value
                    ),
                    "name the environment variable holding the key (`key_env`), or give its SHA-256 (`key_sha256`); never the key itself",
                );
                None
            }
        }
    }

    /// The key in the variable `env` names; a problem is reported at `path`.
    fn key_from_env(
        &mut self,
        path: String,
        env: &Spanned<String>,
    ) -> Option<(KeySource, [u8; 32])> {
        let name = env.value.trim();
        let problem = if !super::backends::valid_env_name(name) {
            "this is not an environment variable name (the value is not shown, in case it is a key)"
                .to_string()
        } else {
            match std::env::var(name) {
                Ok(key) if key.trim().len() >= MIN_KEY_LEN => {
                    return Some((
                        KeySource::Env(name.into()),
                        key_digest(key.trim().as_bytes()),
                    ));
                }
                Ok(key) if key.trim().is_empty() => format!("the variable {name} is empty"),
                Ok(_) => format!(
                    "the key in {name} is shorter than {MIN_KEY_LEN} characters, too easy to guess"
                ),
                Err(_) => format!("the variable {name} is not set (or not UTF-8)"),
            }
        };
        self.issue(
            path,
            env.referenced,
            problem,
            "set the variable to the client's key before starting semroute (e.g. `openssl rand -hex 24`)",
        );
        None
    }

    fn route_access(
        &mut self,
        at: &str,
        list: &[Spanned<String>],
        routes: &[Route],
    ) -> Option<RouteAccess> {
        let mut access = RouteAccess {
            auto: false,
            routes: Vec::new(),
        };
        let mut valid = true;
        for (j, name) in list.iter().enumerate() {
            let name_text = name.value.trim();
            if name_text == "auto" {
                access.auto = true;
            } else if let Some(i) = routes.iter().position(|r| r.name.as_str() == name_text) {
                access.routes.push(RouteId::new(i));
            } else {
                self.issue(
                    format!("{at}.routes[{j}]"),
                    name.referenced,
                    format!("unknown route `{name_text}`"),
                    "name routes defined under `routes:`, or `auto` for classified requests",
                );
                valid = false;
            }
        }
        valid.then_some(access)
    }

    fn backend_access(
        &mut self,
        at: &str,
        list: &[Spanned<String>],
        backends: &[Backend],
    ) -> Option<Vec<BackendId>> {
        let mut ids = Vec::with_capacity(list.len());
        let mut valid = true;
        for (j, name) in list.iter().enumerate() {
            match backends.iter().position(|b| b.name == name.value.trim()) {
                Some(i) => ids.push(BackendId::new(i)),
                None => {
                    self.issue(
                        format!("{at}.backends[{j}]"),
                        name.referenced,
                        format!("unknown backend `{}`", name.value.trim()),
                        "name backends defined under `backends:`",
                    );
                    valid = false;
                }
            }
        }
        valid.then_some(ids)
    }
}
