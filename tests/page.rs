//! The debugging page in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, which `.ci/run` installs): type a prompt, see its route, the bars and
//! the neighbours; the routes, the recent decisions with their filters, the backends'
//! health and a what-if. A screenshot is left at `target/tmp/page.png` for a person to look
//! at. Also the page's headers, and the guard that keeps other sites' pages off `/admin`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod upstream;

use common::serving::{Running, start};
use fantoccini::{Client, ClientBuilder, Locator};
use semroute::Router;
use semroute::http::server::Limits;
use semroute::http::{AppState, DEFAULT_BODY_LIMIT};
use serde_json::{Value, json};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use upstream::{Behaviour, Upstream};

const PROMPT: &str = "Write a Python function to parse JSON";

fn routes(up: &str, down: &str) -> String {
    format!(
        "log_prompts: true
backends:
  - name: up
    url: {up}
    model: up-model
  - name: down
    url: {down}
    model: down-model
    retries: 0
routes:
  - name: chat
    utterances: [hello there, how are you today, tell me a joke]
    targets: [up]
  - name: code
    utterances: [write a python function, fix this rust compile error, review my pull request]
    keywords: [stack trace]
    targets: [up, down]
  - name: billing
    utterances: [why was I charged twice, how do I update my credit card]
    targets: [up]
default_route: chat
"
    )
}

/// The service over two mock providers, `up` answering and `down` resetting every
/// connection, on a real socket.
async fn service() -> (Running, Upstream, Upstream) {
    let up = Upstream::start("up", Behaviour::Answer).await;
    let down = Upstream::start("down", Behaviour::Reset).await;
    let config = common::config_from(&routes(&up.url, &down.url));
    let worker = common::worker();
    let router = Router::build(config, worker.encoder()).unwrap();
    let state = AppState::ready(Arc::new(router), worker, DEFAULT_BODY_LIMIT);
    (start(state, Limits::default()).await, up, down)
}

/// chromedriver on a free port, killed with the test.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    /// Kills chromedriver's whole process group: the Chromium it started too, which a
    /// failed test would otherwise leave running.
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromedriver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("chromedriver")
        .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver: install Debian's chromium and chromium-driver (.ci/run does)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver { child, port }
}

async fn browser(driver: &Driver) -> Client {
    let mut options = json!({"args": [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--window-size=1400,2200", "--no-first-run", "--no-default-browser-check",
    ]});
    if std::path::Path::new("/usr/bin/chromium").exists() {
        options["binary"] = json!("/usr/bin/chromium");
    }
    let capabilities = json!({"browserName": "chrome", "goog:chromeOptions": options});
    let Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session through chromedriver")
}

/// Waits until the text of `css`'s first match satisfies `ok`; returns that text.
async fn text_until(page: &Client, css: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(element) = page.find(Locator::Css(css)).await {
            last = element.text().await.unwrap_or_default();
            if ok(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{css} never showed what was expected; last: {last:?}")
}

async fn type_into(page: &Client, id: &str, text: &str) {
    let field = page.find(Locator::Id(id)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

async fn click(page: &Client, id: &str) {
    page.find(Locator::Id(id))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Milliseconds from navigation to the mark `name` the page set, or to its load event.
async fn since_navigation(page: &Client, name: &str) -> f64 {
    let script = "const [m] = performance.getEntriesByName(arguments[0]);
        const [n] = performance.getEntriesByType('navigation');
        return m ? m.startTime : n.loadEventEnd;";
    let value = page.execute(script, vec![json!(name)]).await.unwrap();
    value.as_f64().unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_a_decision_the_routes_the_recent_prompts_the_backends_and_a_what_if() {
    let (server, _up, _down) = service().await;
    let client = common::http_client();
    // Three failed calls straight to `down` open its breaker.
    for _ in 0..3 {
        let answer = client
            .post(server.url("/v1/chat/completions"))
            .json(&json!({"model": "down", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 502);
    }
    let driver = chromedriver();
    let page = browser(&driver).await;
    page.goto(&server.url("/")).await.unwrap();
    text_until(&page, "#routes-count", |t| t == "(3)").await;
    let loaded = since_navigation(&page, "semroute-ready").await;

    // A prompt typed and sent: its route, how it was matched, a bar per candidate.
    type_into(&page, "prompt", PROMPT).await;
    click(&page, "classify").await;
    text_until(&page, "#decision-route", |t| t == "code").await;
    assert_eq!(
        page.find(Locator::Id("decision-matched"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "semantic"
    );
    let ambiguous = page.find(Locator::Id("decision-ambiguous")).await.unwrap();
    assert!(
        !ambiguous.is_displayed().await.unwrap(),
        "a clear margin is not flagged"
    );
    let bars = page
        .find_all(Locator::Css("#candidates li .bar .threshold"))
        .await
        .unwrap();
    assert_eq!(
        bars.len(),
        3,
        "one bar with its threshold line per candidate"
    );
    let best = text_until(&page, "#candidates li", |t| t.starts_with("code")).await;
    assert!(
        best.contains("write a python function"),
        "the nearest utterance: {best}"
    );
    let roundtrip = text_until(&page, "#roundtrip", |t| t.starts_with("answered in")).await;

    // A keyword override shows which rule fired.
    type_into(&page, "prompt", "here is my stack trace").await;
    click(&page, "classify").await;
    text_until(&page, "#decision-matched", |t| t == "keyword").await;
    text_until(&page, "#decision-overrides", |t| {
        t.contains("stack trace") && t.contains("code")
    })
    .await;

    // A prompt is shown as the text it is, never run as markup.
    let markup = "<img src=x onerror=\"document.title='pwned'\"> hello there";
    type_into(&page, "prompt", markup).await;
    click(&page, "classify").await;
    text_until(&page, "#recent tbody", |t| t.contains(markup)).await;
    assert!(
        page.find_all(Locator::Css("main img"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(page.title().await.unwrap(), "semroute");

    // The recent decisions, newest first, filtered by route and by how they matched.
    text_until(&page, "#recent tbody", |t| {
        t.contains(PROMPT) && t.contains("stack trace")
    })
    .await;
    page.find(Locator::Id("filter-matched"))
        .await
        .unwrap()
        .select_by_value("keyword")
        .await
        .unwrap();
    text_until(&page, "#recent tbody", |t| {
        t.contains("stack trace") && !t.contains(PROMPT)
    })
    .await;
    page.find(Locator::Id("filter-matched"))
        .await
        .unwrap()
        .select_by_value("")
        .await
        .unwrap();
    page.find(Locator::Id("filter-route"))
        .await
        .unwrap()
        .select_by_value("billing")
        .await
        .unwrap();
    text_until(&page, "#recent-note", |t| t.starts_with("0 shown")).await;

    // Backends: `down`'s breaker opened after its three failures (half-open once its first
    // cooldown is over), `up` is closed.
    let down = text_until(&page, "#backends tr[data-backend=down]", |t| !t.is_empty()).await;
    let cells: Vec<&str> = down.split_whitespace().collect();
    assert!(
        matches!(cells[2], "open" | "half-open") && cells[3] == "3",
        "down: {down}"
    );
    let up = text_until(&page, "#backends tr[data-backend=up]", |t| !t.is_empty()).await;
    assert!(up.starts_with("up up-model closed 0"), "up: {up}");

    // What if `code` wanted a near-perfect match: the Python prompt would leave it.
    page.find(Locator::Css("#routes details[data-route=code] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    type_into(&page, "whatif-threshold", "0.99").await;
    click(&page, "whatif-run").await;
    text_until(&page, "#whatif-summary", |t| t.contains("would move")).await;
    let moved = text_until(&page, "#whatif-moved tbody", |t| t.contains(PROMPT)).await;
    assert!(moved.contains("code (semantic"), "moved from code: {moved}");
    assert!(
        moved.contains("chat (default"),
        "to the default route: {moved}"
    );
    text_until(&page, "#shadow", |t| t.contains("No shadow config")).await;

    // A whole conversation: the last user message is decided with the turns before it.
    page.find(Locator::Css("input[name=mode][value=chat]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    type_into(
        &page,
        "prompt",
        "user: write a python function to sort a list\nassistant: here it is\nuser: now make it faster",
    )
    .await;
    click(&page, "classify").await;
    text_until(&page, "#decision-conversation", |t| {
        t.contains("previous route")
    })
    .await;
    text_until(&page, "#decision-route", |t| t == "code").await;

    // For the screenshot: the first prompt's decision and every recent decision.
    page.find(Locator::Css("input[name=mode][value=text]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    type_into(&page, "prompt", PROMPT).await;
    click(&page, "classify").await;
    text_until(&page, "#decision-matched", |t| t == "semantic").await;
    page.find(Locator::Id("filter-route"))
        .await
        .unwrap()
        .select_by_value("")
        .await
        .unwrap();
    text_until(&page, "#recent-note", |t| t.starts_with("8 shown")).await;
    let shot = page.screenshot().await.unwrap();
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("page.png");
    std::fs::write(&path, &shot).unwrap();
    assert!(shot.starts_with(b"\x89PNG"), "a PNG screenshot");
    // Loaded again, as a person reloading it would (the browser is warm now).
    page.refresh().await.unwrap();
    text_until(&page, "#routes-count", |t| t == "(3)").await;
    let again = since_navigation(&page, "semroute-ready").await;
    eprintln!(
        "page: everything shown {loaded:.0} ms after the first navigation, {again:.0} ms after a reload; \
         first classify {roundtrip}; screenshot at {}",
        path.display()
    );
    page.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_one_self_contained_document_and_other_sites_cannot_use_the_loopback_pass() {
    let (server, _up, _down) = service().await;
    let client = common::http_client();
    for path in ["/", "/ui"] {
        let answer = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        let policy = answer.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"));
        assert!(
            answer.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let html = answer.text().await.unwrap();
        assert!(
            html.contains("/ui/app.js") && !html.contains("http"),
            "no asset from elsewhere"
        );
    }
    for (path, kind) in [
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let answer = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        assert!(
            answer.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind)
        );
    }
    let own = format!("http://{}", server.addr);
    let admin = |origin: Option<&str>, host: Option<&str>| {
        let mut request = client.get(server.url("/admin/config"));
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        if let Some(host) = host {
            request = request.header("host", host);
        }
        request.send()
    };
    assert_eq!(admin(Some(&own), None).await.unwrap().status(), 200);
    let foreign = admin(Some("http://evil.example"), None).await.unwrap();
    assert_eq!(foreign.status(), 403);
    let body: Value = foreign.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden");
    let rebound = admin(None, Some("rebound.evil.example")).await.unwrap();
    assert_eq!(rebound.status(), 403);
    let post = client
        .post(server.url("/admin/reload"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        post.status(),
        403,
        "a page elsewhere cannot reload the config"
    );
}
