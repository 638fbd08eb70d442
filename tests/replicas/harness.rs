//! Real processes for the shared-state tests: a `redis-server` on a free port of 127.0.0.1
//! (Debian's package; `.ci/run` installs it), and `semroute serve` replicas on one config,
//! each logging to a buffer the tests read.

use crate::common;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (free when asked; a test binds it at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` of its own, without persistence; killed when dropped.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        let mut redis = Redis {
            port: free_port(),
            child: None,
        };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts (again) on the same port, and waits until it answers.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (Debian's redis-server package)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.query(&["PING"]).is_none() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A command's reply as text (`None`: no answer).
    pub fn query(&self, args: &[&str]) -> Option<redis::Value> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut connection = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command.query(&mut connection).ok()
    }

    /// An integer field of a hash (0 when absent).
    pub fn hash_int(&self, key: &str, field: &str) -> i64 {
        match self.query(&["HGET", key, field]) {
            Some(redis::Value::BulkString(bytes)) => {
                String::from_utf8_lossy(&bytes).parse().unwrap_or(0)
            }
            _ => 0,
        }
    }

    /// Every key matching `pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        match self.query(&["KEYS", pattern]) {
            Some(redis::Value::Array(keys)) => keys
                .into_iter()
                .filter_map(|k| match k {
                    redis::Value::BulkString(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `semroute serve` on `config`; killed when dropped. Its log lines are kept.
pub struct Replica {
    pub addr: String,
    child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Replica {
    /// Starts a replica with these environment variables and waits until it is ready.
    pub async fn start(config: &Path, env: &[(&str, &str)]) -> Replica {
        let mut command = Command::new(env!("CARGO_BIN_EXE_semroute"));
        command
            .args(["serve", "--config"])
            .arg(config)
            .args(["--addr", "127.0.0.1:0"])
            .env("RUST_LOG", "semroute=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("addr=").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(120)).unwrap();
        let replica = Replica { addr, child, log };
        replica.wait_ready().await;
        replica
    }

    async fn wait_ready(&self) {
        let client = common::http_client();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(ready) = client.get(self.url("/readyz")).send().await
                && common::openapi::read("GET", ready).await.0 == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica not ready: {:?}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Its `GET /metrics` page.
    pub async fn metrics(&self) -> String {
        let answer = common::http_client()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap();
        let (_, _, body) = common::openapi::read("GET", answer).await;
        String::from_utf8(body).unwrap()
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
