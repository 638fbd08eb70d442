//! `GET /v1/usage`: spend and limits per client key, and per user with `?user=` (and
//! `?key=`). An admin key or a loopback client that no proxy forwarded sees every key; any
//! other key sees only its own.

use super::AppState;
use super::tenant;
use crate::config::Limits;
use crate::error::{ApiError, ErrorBody, ErrorKind};
use crate::quota::{BudgetUsage, Quota};
use axum::Json;
use axum::extract::{Request, State};
use serde::Serialize;

/// What `GET /v1/usage` answers: the keys the caller may see, and with `?user=` one user.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Usage {
    /// Where the counters live: `redis` or `memory` (this process).
    #[schema(pattern = "^(redis|memory)$")]
    state: &'static str,
    keys: Vec<KeyUsage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<UserUsage>,
}

/// A client key's limits and where its budgets stand.
#[derive(Serialize, utoipa::ToSchema)]
struct KeyUsage {
    name: String,
    limits: LimitsOut,
    budgets: Vec<BudgetUsage>,
}

/// One end user's (`?user=`) limits and budgets under a key (`-`: no key).
#[derive(Serialize, utoipa::ToSchema)]
struct UserUsage {
    key: String,
    user: String,
    limits: LimitsOut,
    budgets: Vec<BudgetUsage>,
}

/// Limits as configured (`null`: none).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Limits)]
struct LimitsOut {
    rpm: Option<u64>,
    tpm: Option<u64>,
    usd_per_day: Option<f64>,
    usd_per_month: Option<f64>,
}

impl From<&Limits> for LimitsOut {
    fn from(l: &Limits) -> Self {
        LimitsOut {
            rpm: l.rpm,
            tpm: l.tpm,
            usd_per_day: l.usd_per_day,
            usd_per_month: l.usd_per_month,
        }
    }
}

/// Spend and limits per client key; per user with `?user=` (and `?key=`).
#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = "tenants",
    params(
        ("user" = Option<String>, Query, description = "Also show this end user's budgets"),
        ("key" = Option<String>, Query, description = "The key the user is under (default: the caller's)"),
    ),
    security(("client_key" = []), ("admin_key" = []), ()),
    responses(
        (status = 200, description = "Every key for an admin key or a direct loopback client; the caller's own otherwise", body = Usage),
        (status = 401, description = "`unauthorized`: no key (and not on loopback), or a key that is not valid", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 404, description = "`not_found`: `?key=` names no key the caller may see", body = ErrorBody),
        (status = 503, description = "`state_unavailable`: the shared counters (Redis) cannot be read", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn usage(
    State(state): State<AppState>,
    request: Request,
) -> Result<Json<Usage>, ApiError> {
    let live = state.live();
    let config = live.config.clone();
    let caller = tenant::identify(&config, request.headers())
        .inspect_err(|e| tenant::count_refusal(&state.metrics, e))?;
    let sees_all = tenant::local_and_direct(&request)
        || caller.is_some_and(|k| config.auth.keys.get(k).is_some_and(|k| k.admin));
    if !sees_all && caller.is_none() {
        return Err(ApiError::new(
            ErrorKind::Unauthorized,
            "usage is shown to an admin key, to a key for its own spend, or on loopback",
        ));
    }
    let (key_param, user_param) = query(&request);
    let Some(quota) = &live.quota else {
        return Ok(Json(Usage {
            state: "memory",
            keys: Vec::new(),
            user: None,
        }));
    };
    let visible: Vec<usize> = (0..config.auth.keys.len())
        .filter(|&k| sees_all || caller == Some(k))
        .collect();
    let mut keys = Vec::with_capacity(visible.len());
    for &k in &visible {
        keys.push(KeyUsage {
            name: config.auth.keys[k].name.clone(),
            limits: (&config.auth.keys[k].limits).into(),
            budgets: budgets(quota, Some(k), None).await?,
        });
    }
    let user = match user_param {
        None => None,
        Some(user) => {
            let key = match key_param.as_deref() {
                None => caller,
                Some(name) => Some(
                    config
                        .auth
                        .keys
                        .iter()
                        .position(|k| k.name == name)
                        .filter(|k| visible.contains(k))
                        .ok_or_else(|| {
                            ApiError::new(ErrorKind::NotFound, format!("no key `{name}` to show"))
                        })?,
                ),
            };
            let label = crate::quota::user_label(&user);
            Some(UserUsage {
                key: key
                    .and_then(|k| config.auth.keys.get(k))
                    .map_or("-".into(), |k| k.name.clone()),
                budgets: budgets(quota, key, Some(&label)).await?,
                user,
                limits: (&config.per_user).into(),
            })
        }
    };
    Ok(Json(Usage {
        state: if quota.shared().is_some() {
            "redis"
        } else {
            "memory"
        },
        keys,
        user,
    }))
}

async fn budgets(
    quota: &Quota,
    key: Option<usize>,
    user: Option<&str>,
) -> Result<Vec<BudgetUsage>, ApiError> {
    quota.usage(key, user).await.map_err(|e| {
        ApiError::new(
            ErrorKind::StateUnavailable,
            format!("cannot read the shared counters: {e}"),
        )
    })
}

/// `?key=` and `?user=`.
fn query(request: &Request) -> (Option<String>, Option<String>) {
    let mut key = None;
    let mut user = None;
    for (name, value) in url::form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
    {
        match name.as_ref() {
            "key" => key = Some(value.into_owned()),
            "user" => user = Some(value.into_owned()),
            _ => {}
        }
    }
    (key, user)
}
