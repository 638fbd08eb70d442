//! Drives CONCURRENCY clients against two replicas (alternately) until every one of them is
//! refused by the budget, and prints how many requests were answered, as JSON.
//! Usage: `overspend URL_A URL_B KEY CONCURRENCY` (bench/overspend.sh runs it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (urls, key) = ([args[1].clone(), args[2].clone()], args[3].clone());
    let concurrency: usize = args[4].parse().expect("concurrency");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .unwrap();
    let body = r#"{"model": "instant", "max_tokens": 100, "messages": [{"role": "user", "content": "hello"}]}"#;
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let (client, url, key) = (client.clone(), urls[i % 2].clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let (mut answered, mut other) = (0u64, 0u64);
            loop {
                let reply = client
                    .post(format!("{url}/v1/chat/completions"))
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match reply.map(|r| r.status().as_u16()) {
                    Ok(200) => answered += 1,
                    Ok(429) => return (answered, other),
                    _ => other += 1,
                }
            }
        }));
    }
    let (mut answered, mut other) = (0, 0);
    for task in tasks {
        let (a, o) = task.await.unwrap();
        answered += a;
        other += o;
    }
    println!("{{\"clients\": {concurrency}, \"answered\": {answered}, \"failed\": {other}}}");
}
