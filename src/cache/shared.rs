//! Exact cache entries in the shared Redis: one key per request key, set with the cache's
//! TTL (`SET ... EX`), so every replica answers from what any of them cached.

use super::Entry;
use crate::quota::shared::{StoreError, connection, timed};
use redis::aio::ConnectionManager;
use std::sync::Arc;
use std::time::Duration;

pub struct RedisEntries {
    connection: ConnectionManager,
    prefix: String,
    timeout: Duration,
    ttl: Duration,
}

impl RedisEntries {
    pub fn new(
        url: &str,
        prefix: &str,
        timeout: Duration,
        ttl: Duration,
    ) -> Result<RedisEntries, StoreError> {
        Ok(RedisEntries {
            connection: connection(url, timeout)?,
            prefix: prefix.to_string(),
            timeout,
            ttl,
        })
    }

    fn key(&self, key: &[u8; 32]) -> String {
        format!("{}:cache:{}", self.prefix, hex::encode(key))
    }

    async fn run<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        timed(self.timeout, call).await
    }

    pub async fn get(&self, key: &[u8; 32]) -> Result<Option<Arc<Entry>>, StoreError> {
        let mut connection = self.connection.clone();
        let mut get = redis::cmd("GET");
        get.arg(self.key(key));
        let text: Option<String> = self.run(get.query_async(&mut connection)).await?;
        // An entry that does not parse (another version's) is a miss.
        Ok(text.and_then(|t| serde_json::from_str::<Entry>(&t).ok().map(Arc::new)))
    }

    pub async fn put(&self, key: &[u8; 32], entry: &Entry) -> Result<(), StoreError> {
        let text = serde_json::to_string(entry).map_err(|e| StoreError::Redis(e.to_string()))?;
        let mut connection = self.connection.clone();
        let mut set = redis::cmd("SET");
        set.arg(self.key(key))
            .arg(text)
            .arg("EX")
            .arg(self.ttl.as_secs().max(1));
        self.run(set.query_async::<()>(&mut connection)).await
    }
}
