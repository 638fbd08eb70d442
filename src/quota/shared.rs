//! The counters in a Redis every replica shares: one Lua script per admission and one per
//! settlement (`lua/`), each a single round trip, atomic, and timed by Redis's own clock
//! so replicas with drifting clocks still agree. A call that does not answer within
//! `state.timeout` is an error for the caller to decide on (`on_error`); the connection
//! reconnects by itself.

use super::memory::BudgetState;
use super::rules::{Admission, Outcome, RateCharge, Settlement, WINDOW_US};
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

const ADMIT: &str = include_str!("lua/admit.lua");
const SETTLE: &str = include_str!("lua/settle.lua");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis failed: {0}")]
    Redis(String),
}

impl From<redis::RedisError> for StoreError {
    fn from(err: redis::RedisError) -> Self {
        // The error's text never holds the URL (and so no password).
        StoreError::Redis(format!("{:?}: {}", err.kind(), err.detail().unwrap_or("")))
    }
}

pub struct RedisStore {
    connection: ConnectionManager,
    /// The key prefix (`state.prefix`), for the store's own keys.
    prefix: String,
    timeout: Duration,
    admit: Script,
    settle: Script,
}

/// A connection to the Redis at `url` that connects lazily (a Redis that is down at start
/// is no error) and reconnects by itself; each call's answer is awaited `timeout` at most.
/// The limits, the experiments' counters and the answer cache each hold one.
pub fn connection(url: &str, timeout: Duration) -> Result<ConnectionManager, StoreError> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(timeout))
        .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1));
    Ok(ConnectionManager::new_lazy_with_config(client, config)?)
}

/// `call`'s result, or a timeout error once `timeout` has passed.
pub async fn timed<T>(
    timeout: Duration,
    call: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StoreError::Timeout(timeout)),
    }
}

impl RedisStore {
    /// A store on `url`; connects lazily, so a Redis that is down at start is no error.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<RedisStore, StoreError> {
        Ok(RedisStore {
            connection: connection(url, timeout)?,
            prefix: prefix.to_string(),
            timeout,
            admit: Script::new(ADMIT),
            settle: Script::new(SETTLE),
        })
    }

    async fn run<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        timed(self.timeout, call).await
    }

    /// The same decision as `MemoryStore::admit`, made by Redis for every replica.
    pub async fn admit(&self, admission: &Admission) -> Result<Outcome, StoreError> {
        let mut invocation = self.admit.prepare_invoke();
        for rate in &admission.rates {
            invocation.key(&rate.key);
        }
        for budget in &admission.budgets {
            invocation.key(&budget.key);
        }
        invocation
            .arg(admission.rates.len())
            .arg(admission.budgets.len())
            .arg(&admission.id)
            .arg(admission.ttl_us);
        for rate in &admission.rates {
            invocation.arg(rate.span(rate.cost));
        }
        for budget in &admission.budgets {
            invocation
                .arg(budget.limit)
                .arg(budget.amount)
                .arg(budget.keep_us / 1000);
        }
        let mut connection = self.connection.clone();
        let reply: Vec<i64> = self.run(invocation.invoke_async(&mut connection)).await?;
        outcome(&reply, &admission.rates)
    }

    /// The same settlement as `MemoryStore::settle`; a repeated one is recognised. Returns
    /// each budget's spent and reserved nano-USD after it.
    pub async fn settle(&self, settlement: &Settlement) -> Result<Vec<BudgetState>, StoreError> {
        let mut invocation = self.settle.prepare_invoke();
        invocation.key(format!("{}:settled:{}", self.prefix, settlement.id));
        for (budget, _) in &settlement.budgets {
            invocation.key(&budget.key);
        }
        for (rate, _) in &settlement.refunds {
            invocation.key(&rate.key);
        }
        invocation
            .arg(&settlement.id)
            .arg(settlement.budgets.len())
            .arg(settlement.refunds.len());
        for (budget, actual) in &settlement.budgets {
            invocation.arg(*actual).arg(budget.keep_us / 1000);
        }
        for (rate, units) in &settlement.refunds {
            invocation.arg(rate.span(*units));
        }
        let mut connection = self.connection.clone();
        let reply: Vec<i64> = self.run(invocation.invoke_async(&mut connection)).await?;
        Ok(reply
            .chunks_exact(2)
            .map(|pair| BudgetState {
                spent: pair[0],
                reserved: pair[1],
            })
            .collect())
    }

    /// A budget's spent and reserved nano-USD (0 and 0 when it has none yet; reservations
    /// that lapsed are counted until the next admission on it clears them).
    pub async fn budget(&self, key: &str) -> Result<BudgetState, StoreError> {
        let mut connection = self.connection.clone();
        let (spent, reserved): (Option<i64>, Option<i64>) = self
            .run(
                redis::cmd("HMGET")
                    .arg(key)
                    .arg("spent")
                    .arg("reserved")
                    .query_async(&mut connection),
            )
            .await?;
        Ok(BudgetState {
            spent: spent.unwrap_or(0),
            reserved: reserved.unwrap_or(0),
        })
    }

    /// Runs a pipeline (its replies ignored).
    pub async fn pipeline(&self, pipe: &redis::Pipeline) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        self.run(pipe.query_async::<()>(&mut connection)).await
    }

    /// Runs one command.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut connection = self.connection.clone();
        self.run(cmd.query_async(&mut connection)).await
    }

    /// Round-trip time of a PING, for readiness and metrics.
    pub async fn ping(&self) -> Result<Duration, StoreError> {
        let started = std::time::Instant::now();
        let mut connection = self.connection.clone();
        let _: String = self
            .run(redis::cmd("PING").query_async(&mut connection))
            .await?;
        Ok(started.elapsed())
    }
}

/// The script's reply as an outcome.
fn outcome(reply: &[i64], rates: &[RateCharge]) -> Result<Outcome, StoreError> {
    let bad = || StoreError::Redis(format!("unexpected reply from the admit script: {reply:?}"));
    let index = |i: i64| usize::try_from(i - 1).map_err(|_| bad());
    match reply {
        [0, aheads @ ..] if aheads.len() == rates.len() => Ok(Outcome::Admitted(
            rates
                .iter()
                .zip(aheads)
                .map(|(rate, &ahead)| rate.allowance(ahead.clamp(0, WINDOW_US as i64) as u64))
                .collect(),
        )),
        [1, at, retry_after] => Ok(Outcome::Limited {
            at: index(*at)?,
            retry_after_us: (*retry_after).max(0) as u64,
        }),
        [2, at, spent, reserved] => Ok(Outcome::OverBudget {
            at: index(*at)?,
            spent: *spent,
            reserved: *reserved,
        }),
        _ => Err(bad()),
    }
}
