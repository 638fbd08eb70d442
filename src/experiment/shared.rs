//! The experiments' counters in the Redis every replica shares (`state.redis`): one hash per
//! variant whose fields only ever add (HINCRBY, HINCRBYFLOAT), so replicas' requests add
//! up; a request's assignment under a key that lapses after the feedback window, marked
//! taken by one Lua script so feedback counts once across replicas.

use super::stats::Sums;
use super::store::{Assigned, Counters, FEEDBACK_WINDOW, FeedbackError, Observation};
use crate::quota::shared::{StoreError, connection, timed};
use redis::Script;
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::time::Duration;

/// Marks an assignment taken and returns it: nil (unknown), "" (taken before) or its JSON.
const TAKE: &str = r"
local v = redis.call('GET', KEYS[1])
if v == false then return false end
if v ~= '' then redis.call('SET', KEYS[1], '', 'KEEPTTL') end
return v
";

/// The metrics kept as sums, by field prefix.
const SUMS: [&str; 5] = ["latency_ms", "ttfb_ms", "tokens", "cost_usd", "feedback"];

pub struct RedisCounters {
    connection: ConnectionManager,
    prefix: String,
    timeout: Duration,
    take: Script,
}

impl RedisCounters {
    /// Counters on `url` under `prefix`; connects lazily (a Redis that is down is an error
    /// of each call, not of the start).
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<RedisCounters, StoreError> {
        Ok(RedisCounters {
            connection: connection(url, timeout)?,
            prefix: prefix.to_string(),
            timeout,
            take: Script::new(TAKE),
        })
    }

    async fn run<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        timed(self.timeout, call).await
    }

    fn variant_key(&self, experiment: &str, variant: &str) -> String {
        format!("{}:experiment:{experiment}:{variant}", self.prefix)
    }

    fn slot_key(&self, slot: &str) -> String {
        format!("{}:experiment-request:{slot}", self.prefix)
    }

    pub async fn assigned(&self, slot: &str, assigned: &Assigned) -> Result<(), StoreError> {
        let value = serde_json::to_string(&(&assigned.experiment, &assigned.variant))
            .map_err(|e| StoreError::Redis(e.to_string()))?;
        let mut connection = self.connection.clone();
        let mut set = redis::cmd("SET");
        // NX: a client sending the same request id again keeps the first assignment.
        set.arg(self.slot_key(slot))
            .arg(value)
            .arg("NX")
            .arg("EX")
            .arg(FEEDBACK_WINDOW.as_secs());
        self.run(set.query_async::<()>(&mut connection)).await
    }

    pub async fn observe(
        &self,
        experiment: &str,
        variant: &str,
        o: &Observation,
    ) -> Result<(), StoreError> {
        let key = self.variant_key(experiment, variant);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hincr(&key, "requests", 1)
            .ignore()
            .hincr(&key, "errors", i64::from(o.failed))
            .ignore();
        let values = [o.latency_ms, o.ttfb_ms, o.tokens, o.cost_usd];
        for (name, value) in SUMS.iter().zip(values) {
            if let Some(v) = value.filter(|v| v.is_finite()) {
                add_sum(&mut pipe, &key, name, v);
            }
        }
        let mut connection = self.connection.clone();
        self.run(pipe.query_async::<()>(&mut connection)).await
    }

    pub async fn feedback(
        &self,
        slot: &str,
        score: f64,
    ) -> Result<Result<Assigned, FeedbackError>, StoreError> {
        let mut connection = self.connection.clone();
        let mut invocation = self.take.prepare_invoke();
        invocation.key(self.slot_key(slot));
        let taken: Option<String> = self.run(invocation.invoke_async(&mut connection)).await?;
        let assigned = match taken.as_deref() {
            None => return Ok(Err(FeedbackError::Unknown)),
            Some("") => return Ok(Err(FeedbackError::Repeated)),
            Some(json) => match serde_json::from_str::<(String, String)>(json) {
                Ok((experiment, variant)) => Assigned {
                    experiment,
                    variant,
                },
                Err(_) => return Ok(Err(FeedbackError::Unknown)),
            },
        };
        let key = self.variant_key(&assigned.experiment, &assigned.variant);
        let mut pipe = redis::pipe();
        pipe.atomic();
        add_sum(&mut pipe, &key, "feedback", score);
        self.run(pipe.query_async::<()>(&mut connection)).await?;
        Ok(Ok(assigned))
    }

    pub async fn counters(&self, experiment: &str, variant: &str) -> Result<Counters, StoreError> {
        let mut connection = self.connection.clone();
        let mut get = redis::cmd("HGETALL");
        get.arg(self.variant_key(experiment, variant));
        let fields = self
            .run(get.query_async::<HashMap<String, String>>(&mut connection))
            .await?;
        let number = |name: &str| {
            fields
                .get(name)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let sums = |name: &str| Sums {
            n: number(&format!("{name}.n")),
            sum: number(&format!("{name}.sum")),
            sum_sq: number(&format!("{name}.sum_sq")),
        };
        Ok(Counters {
            requests: number("requests") as u64,
            errors: number("errors") as u64,
            latency_ms: sums("latency_ms"),
            ttfb_ms: sums("ttfb_ms"),
            tokens: sums("tokens"),
            cost_usd: sums("cost_usd"),
            feedback: sums("feedback"),
        })
    }
}

fn add_sum(pipe: &mut redis::Pipeline, key: &str, name: &str, value: f64) {
    pipe.cmd("HINCRBYFLOAT")
        .arg(key)
        .arg(format!("{name}.n"))
        .arg(1)
        .ignore()
        .cmd("HINCRBYFLOAT")
        .arg(key)
        .arg(format!("{name}.sum"))
        .arg(value)
        .ignore()
        .cmd("HINCRBYFLOAT")
        .arg(key)
        .arg(format!("{name}.sum_sq"))
        .arg(value * value)
        .ignore();
}
