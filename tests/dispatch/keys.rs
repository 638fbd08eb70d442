//! Keys and URLs never reach the client: the key sent as a bearer token, a backend refusing
//! its key, error bodies and events that quote it (even escaped), and error messages that
//! name backends, never their URLs.

use crate::proxy::*;
use crate::upstream::{Behaviour, Upstream};
use axum::http::StatusCode;

#[tokio::test]
async fn the_api_key_comes_from_the_environment_and_is_sent_as_a_bearer_token() {
    // SAFETY (test): set before any thread reads this variable; the name is unique to this test.
    unsafe { std::env::set_var("SEMROUTE_TEST_KEY_A", "sk-test-secret") };
    let a = Upstream::start("a", Behaviour::status(503)).await;
    let s = state(
        &backend("a", &a.url, "    api_key_env: SEMROUTE_TEST_KEY_A\n"),
        "a",
        "",
    );
    let reply = chat(&s, request("chat")).await;
    assert_eq!(
        a.received()[0].authorization.as_deref(),
        Some("Bearer sk-test-secret")
    );
    assert!(
        !reply.body.contains("sk-test-secret"),
        "never echoed in errors"
    );
}

#[tokio::test]
async fn a_backend_refusing_its_key_falls_over_cools_down_and_its_key_never_reaches_the_client() {
    for (status, variable, key) in [
        (
            401,
            "SEMROUTE_HARDENING_KEY_401",
            "sk-hardening-401-d3adb33f",
        ),
        (
            403,
            "SEMROUTE_HARDENING_KEY_403",
            "sk-hardening-403-f00dface",
        ),
    ] {
        // SAFETY (test): set before the app that reads it is built; the name is unique to
        // this test.
        unsafe { std::env::set_var(variable, key) };
        let (a, b, s) = pair_with(
            Behaviour::EchoKey(status),
            Behaviour::Answer,
            &format!("    api_key_env: {variable}\n"),
        )
        .await;
        let reply = chat(&s, request("chat")).await;
        assert_eq!(reply.status, StatusCode::OK, "{status}: {}", reply.body);
        assert_eq!(reply.header("x-semroute-backend"), "b");
        assert_eq!(reply.content(), "Hello from b");
        assert!(!reply.shows(key), "{status}: the key leaked");
        // The upstream did get the key (and quoted it back): the check above means something.
        assert_eq!(
            a.received()[0].authorization.as_deref(),
            Some(format!("Bearer {key}").as_str())
        );
        assert_eq!((a.count(), b.count()), (1, 1), "{status}: no retry");

        // Cooling down: the next requests, streaming or not, do not ask a again.
        let reply = chat(&s, stream_request("chat")).await;
        assert_eq!(reply.header("x-semroute-backend"), "b");
        assert_eq!(reply.header("x-semroute-attempts"), "1");
        assert!(!reply.shows(key));
        let reply = chat(&s, request("chat")).await;
        assert_eq!(reply.header("x-semroute-backend"), "b");
        assert_eq!(
            a.count(),
            1,
            "{status}: the refused backend was asked again"
        );
    }
}

#[tokio::test]
async fn a_lone_backend_refusing_its_key_gives_a_502_naming_it_without_its_url_or_key() {
    let (variable, key) = ("SEMROUTE_HARDENING_KEY_ONLY", "sk-hardening-only-c0ffee42");
    // SAFETY (test): set before the app that reads it is built; the name is unique to this test.
    unsafe { std::env::set_var(variable, key) };
    let a = Upstream::start("keyed", Behaviour::EchoKey(401)).await;
    let s = state(
        &backend("keyed", &a.url, &format!("    api_key_env: {variable}\n")),
        "keyed",
        "",
    );
    let reply = chat(&s, request("chat")).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.body);
    let message = reply.error_message();
    assert!(message.contains("keyed"), "{message}");
    assert!(!message.contains("127.0.0.1"), "{message}");
    assert!(!message.contains(&a.url), "{message}");
    assert!(!reply.shows(key), "the key leaked: {}", reply.body);

    // A minute's cooldown: the next request is not sent and says when to come back.
    let reply = chat(&s, request("chat")).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    let retry: u64 = reply.header("retry-after").parse().unwrap();
    assert!((50..=61).contains(&retry), "{retry}");
    assert!(!reply.shows(key));
    assert_eq!(a.count(), 1);
}

#[tokio::test]
async fn an_error_body_quoting_the_key_is_withheld_when_the_error_goes_to_the_client() {
    let (variable, key) = ("SEMROUTE_HARDENING_KEY_400", "sk-hardening-400-8badf00d");
    // SAFETY (test): set before the app that reads it is built; the name is unique to this test.
    unsafe { std::env::set_var(variable, key) };
    let a = Upstream::start("a", Behaviour::EchoKey(400)).await;
    let s = state(
        &backend("a", &a.url, &format!("    api_key_env: {variable}\n")),
        "a",
        "",
    );
    for body in [request("chat"), stream_request("chat")] {
        let reply = chat(&s, body).await;
        // A 400 is the client's to see, but not with the key in it.
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
        assert!(!reply.shows(key), "the key leaked: {}", reply.body);
        assert!(reply.json()["error"].is_object(), "{}", reply.body);
    }
    assert_eq!(a.count(), 2);
}

#[tokio::test]
async fn a_key_quoted_in_an_error_event_or_escaped_in_an_error_body_never_reaches_the_client() {
    // SAFETY (test): set before any thread reads this variable; the name is unique to this test.
    unsafe {
        std::env::set_var(
            "SEMROUTE_TEST_KEY_ESCAPED",
            "sk-test-escaped-0123456789abcdef",
        )
    };
    let key = "sk-test-escaped-0123456789abcdef";
    let a = Upstream::start("a", Behaviour::EchoKeyEvent).await;
    let s = state(
        &backend(
            "a",
            &a.url,
            "    api_key_env: SEMROUTE_TEST_KEY_ESCAPED\n    retries: 0\n",
        ),
        "a",
        "",
    );
    let reply = chat(&s, request("chat")).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.body);
    assert!(
        !reply.shows(key) && !reply.shows("0123456789abcdef"),
        "{}",
        reply.body
    );
    assert!(reply.error_message().contains("withheld"), "{}", reply.body);

    a.set(Behaviour::EchoKeyEscaped(400));
    let reply = chat(&s, request("chat")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    let decoded = reply.json().to_string();
    assert!(!decoded.contains("0123456789abcdef"), "{decoded}");
    assert_eq!(reply.json()["error"]["code"], "bad_request");
}

#[tokio::test]
async fn error_messages_name_the_backends_that_failed_and_never_their_urls() {
    let primary = Upstream::start("primary", Behaviour::Reset).await;
    let silent = Upstream::start("quiet", Behaviour::Silent).await;
    // Nothing listens here: the connection is refused.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1", listener.local_addr().unwrap())
    };
    let s = state(
        &(backend("primary", &primary.url, "")
            + &backend("quiet", &silent.url, "")
            + &backend("refusing", &closed, "")),
        "primary, quiet, refusing",
        "",
    );
    for body in [request("chat"), stream_request("chat")] {
        let reply = chat(&s, body).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.body);
        let message = reply.error_message();
        for name in ["primary", "quiet", "refusing"] {
            assert!(message.contains(&format!("{name}: ")), "{message}");
        }
        assert!(!message.contains("127.0.0.1"), "{message}");
        assert!(!message.contains("http://"), "{message}");
    }
}
