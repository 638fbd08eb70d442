//! `semroute experiments --url`: a running service's experiments as a table or JSON, and a
//! clear error when the service cannot be reached.

use crate::{run, serve, stderr, stdout};
use std::process::Stdio;

#[test]
fn the_report_of_a_running_service_prints_as_a_table_and_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(
        &path,
        "backends:\n  - {name: small, url: 'http://127.0.0.1:9/v1', model: s}\n  - {name: big, url: 'http://127.0.0.1:9/v1', model: b}\n\
         routes:\n  - name: support\n    utterances: [my order is late]\n    targets: [small, big]\n    \
         experiment: {name: cli-split, variants: {small: 0.9, big: 0.1}, sticky: ip}\n",
    )
    .unwrap();
    let served = serve(&["--config", path.to_str().unwrap()], Stdio::null());
    let url = format!("http://{}", served.addr);
    let table = run(&["experiments", "--url", &url]);
    assert!(table.status.success(), "{}", stderr(&table));
    let text = stdout(&table);
    assert!(
        text.contains("experiment cli-split (route support, sticky by ip)"),
        "{text}"
    );
    assert!(text.contains("small") && text.contains("0.90"), "{text}");
    assert!(
        text.contains("error_rate  big vs small: not enough data yet"),
        "{text}"
    );
    let json = run(&["experiments", "--url", &url, "--json"]);
    let report: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(report["experiments"][0]["variants"][1]["backend"], "big");
    assert_eq!(report["experiments"][0]["variants"][1]["requests"], 0);
}

#[test]
fn an_unreachable_service_is_a_clear_error() {
    let out = run(&["experiments", "--url", "http://127.0.0.1:9"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot reach http://127.0.0.1:9/admin/experiments"),
        "{}",
        stderr(&out)
    );
}
