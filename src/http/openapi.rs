//! `GET /openapi.json`: the OpenAPI 3.1 description of every endpoint, generated from the
//! handlers' `#[utoipa::path]` annotations and the types they answer (`ApiDoc`), plus the
//! shapes the proxy relays without owning them (OpenAI's request, completion and error).

use crate::error::ErrorBody;
use axum::Json;
use std::collections::BTreeMap;
use std::sync::LazyLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as Document, Ref, RefOr, Schema, schema::AnyOfBuilder};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

/// The whole description; every handler of `app()` is listed here (a test compares them).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "semroute",
        description = "A semantic router for LLM apps: classify prompts to routes, and proxy \
OpenAI-style chat completions to each route's backends. Every error is \
`{\"error\": {\"code\", \"message\"}}`; an unknown path answers 404 `not_found`, a known path \
with another method 405 `method_not_allowed`."
    ),
    paths(
        super::classify::classify,
        super::chat::chat_completions,
        super::models::models,
        super::models::model,
        super::usage::usage,
        super::health::routes,
        super::health::healthz,
        super::health::readyz,
        super::health::metrics,
        super::admin::config,
        super::admin::reload,
        super::admin::shadow,
        super::decisions::recent,
        super::whatif::whatif,
        super::inspect::routes,
        super::inspect::backends,
        super::experiments::report,
        super::experiments::feedback,
        openapi,
        super::ui::page,
        super::ui::page_at_ui,
        super::ui::script,
        super::ui::style,
    ),
    modifiers(&Keys, &Unlicensed),
    tags(
        (name = "routing", description = "Which route a prompt goes to"),
        (name = "proxy", description = "The OpenAI-compatible proxy"),
        (name = "tenants", description = "Client keys' limits and spend"),
        (name = "operations", description = "Health, readiness, metrics and the routes in service"),
        (name = "page", description = "The debugging page: it reads /classify and /admin/*"),
        (name = "admin", description = "The config in service, its reload, and what the debugging page reads (loopback or the admin key)"),
    )
)]
pub struct ApiDoc;

/// The description, built once: it is the same for the life of the binary.
static DOCUMENT: LazyLock<Document> = LazyLock::new(ApiDoc::openapi);

/// This description (needs no key: it says nothing about the config in service).
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 description of every endpoint", body = OpenApiDocument))
)]
pub async fn openapi() -> Json<&'static Document> {
    Json(&DOCUMENT)
}

/// The client key (`auth.keys`) and the admin key (`auth.admin_key_env`), both sent as
/// `Authorization: Bearer <key>`. Where `auth.required` is false a client key is optional,
/// so those operations also list the empty requirement.
struct Keys;

impl Modify for Keys {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, what) in [
            ("client_key", "A client key from `auth.keys`"),
            ("admin_key", "The admin key named by `auth.admin_key_env`"),
        ] {
            let scheme = HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(what))
                .build();
            components.add_security_scheme(name, SecurityScheme::Http(scheme));
        }
    }
}

/// utoipa fills `info.license` from `Cargo.toml`, which names none: an empty license name
/// would say something false, so the field goes.
struct Unlicensed;

impl Modify for Unlicensed {
    fn modify(&self, openapi: &mut Document) {
        if openapi
            .info
            .license
            .as_ref()
            .is_some_and(|l| l.name.is_empty())
        {
            openapi.info.license = None;
        }
    }
}

/// An OpenAPI document (this one), described loosely.
#[derive(ToSchema)]
#[allow(dead_code)] // a description only: the document itself is utoipa's `OpenApi`
struct OpenApiDocument {
    /// `3.1.0`.
    openapi: String,
    info: serde_json::Value,
    paths: BTreeMap<String, serde_json::Value>,
    components: Option<serde_json::Value>,
    tags: Option<Vec<serde_json::Value>>,
}

/// A chat completion request in OpenAI's format; every key passes through to the backend
/// untouched apart from `model`.
#[derive(ToSchema, serde::Deserialize)]
#[allow(dead_code)] // a description only: the proxy reads the body as a JSON object
pub struct ChatCompletionRequest {
    /// `auto` (or absent): route by classifying the last user message; a route's name: that
    /// route's targets; a backend's name: that backend alone.
    #[schema(default = "auto")]
    model: Option<String>,
    /// OpenAI's messages; each has a string `role`. With `model: auto` a user message with
    /// visible text is needed.
    messages: Vec<ChatMessage>,
    /// Answer as `text/event-stream` (server-sent events).
    stream: Option<bool>,
    /// The end user, for per-user limits and budgets (else the `x-semroute-user` header).
    user: Option<String>,
    /// Every other key (`temperature`, `tools`, ...) is passed through.
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

/// One message of a chat, as OpenAI shapes it.
#[derive(ToSchema, serde::Deserialize)]
#[allow(dead_code)] // a description only
pub struct ChatMessage {
    role: String,
    /// A string, or a list of parts such as `{"type": "text", "text": "..."}`.
    content: Option<serde_json::Value>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

/// The backend's completion, relayed as it came (OpenAI's `chat.completion`).
#[derive(ToSchema, serde::Deserialize)]
#[allow(dead_code)] // a description only: the answer is relayed byte for byte
pub struct ChatCompletion {
    id: Option<String>,
    /// `chat.completion`.
    object: Option<String>,
    model: Option<String>,
    choices: Vec<serde_json::Value>,
    usage: Option<serde_json::Value>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

/// A backend's own error (4xx other than 401, 403 and 429), relayed as it came: OpenAI's
/// `{"error": {"message", "type", "param", "code"}}`.
#[derive(ToSchema, serde::Deserialize)]
#[allow(dead_code)] // a description only
pub struct UpstreamError {
    error: UpstreamErrorDetail,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

#[derive(ToSchema, serde::Deserialize)]
#[allow(dead_code)] // a description only
struct UpstreamErrorDetail {
    message: Option<String>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

/// The error of a status both semroute and a backend may answer: semroute's own
/// (`ErrorBody`), or the backend's relayed (`UpstreamError`). `anyOf`, not `oneOf`: a
/// semroute error also has the loose shape of an upstream one.
pub struct RelayedError;

impl PartialSchema for RelayedError {
    fn schema() -> RefOr<Schema> {
        AnyOfBuilder::new()
            .item(Ref::from_schema_name(ErrorBody::name()))
            .item(Ref::from_schema_name(UpstreamError::name()))
            .description(Some(
                "semroute's error, or the backend's own error relayed as it came",
            ))
            .into()
    }
}

impl ToSchema for RelayedError {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((ErrorBody::name().into(), ErrorBody::schema()));
        ErrorBody::schemas(schemas);
        schemas.push((UpstreamError::name().into(), UpstreamError::schema()));
        UpstreamError::schemas(schemas);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_with_the_crate_version() {
        let doc = serde_json::to_value(&*DOCUMENT).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(doc["info"]["title"], "semroute");
    }

    #[test]
    fn top_k_bounds_are_the_configs() {
        let doc = serde_json::to_value(&*DOCUMENT).unwrap();
        let top_k = &doc["components"]["schemas"]["ClassifyRequest"]["properties"]["top_k"];
        assert_eq!(top_k["maximum"], crate::config::MAX_TOP_K as u64);
        assert_eq!(top_k["minimum"], 1);
    }
}
