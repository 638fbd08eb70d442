//! `validate`: the shipped and CLINC150 configs accepted; a bad config refused with its
//! file, line, YAML path and a fix; notes on what a config allows.

use crate::{common, run, stderr, stdout};

#[test]
fn validate_accepts_the_shipped_and_clinc_files() {
    let out = run(&["validate", "--config", "routes.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("ok"));
    let clinc = common::shared().join("datasets/clinc150/routes-10shot.yaml");
    let out = run(&["validate", "--config", clinc.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("150 routes"));
}

#[test]
fn validate_names_file_line_and_fix_for_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "routes:\n  - name: a\n    utterances: [x]\n    threshold: 2\n  - name: a\n    utterances: [y]\n",
    )
    .unwrap();
    let out = run(&["validate", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("bad.yaml:4:"), "{err}");
    assert!(err.contains("routes[0].threshold"), "{err}");
    assert!(err.contains("bad.yaml:5:"), "{err}");
    assert!(err.contains("fix:"), "{err}");
}

#[test]
fn validate_refuses_patterns_serve_could_not_compile_and_notes_backends_limited_to_the_lowest_class()
 {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.yaml");
    let patterns: String = (0..10).map(|_| "      - '\\w{1,30}'\n").collect();
    std::fs::write(
        &big,
        format!("routes:\n  - name: a\n    patterns:\n{patterns}"),
    )
    .unwrap();
    let out = run(&["validate", "--config", big.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("big.yaml:10:"), "{err}");
    assert!(err.contains("size limit"), "{err}");

    let classed = dir.path().join("classed.yaml");
    std::fs::write(
        &classed,
        "backends:\n  - name: open\n    url: http://127.0.0.1:1/v1\n    model: m\n  - name: local\n    url: http://127.0.0.1:2/v1\n    model: m\n    data_classes: [public, pii]\nroutes:\n  - name: a\n    utterances: [x]\n    targets: [open, local]\n  - name: b\n    patterns: ['\\d{3}-\\d{2}-\\d{4}']\n    targets: [local]\n    data_class: pii\n",
    )
    .unwrap();
    let out = run(&["validate", "--config", classed.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("classed.yaml:2: note: backends[0].data_classes"),
        "{text}"
    );
    assert!(text.contains("receives only `public` requests"), "{text}");
    assert!(!text.contains("backends[1]"), "{text}");
}
