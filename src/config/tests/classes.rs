//! Data classes: the order, unknown classes, and who may receive a classed request.

use super::*;

#[test]
fn a_data_class_no_target_accepts_is_refused() {
    let problem = issue(&format!(
        "{BACKENDS}routes:\n  - name: a\n    utterances: [x]\n    targets: [fast]\n    data_class: secret\n"
    ));
    assert_eq!(problem.path, "routes[0].data_class");
    assert!(problem.message.contains("`secret`"));
}

#[test]
fn once_data_classes_are_used_a_backend_without_a_list_takes_only_the_lowest_and_validate_says_so()
{
    let yaml = "backends:\n  - name: open\n    url: http://127.0.0.1:1/v1\n    model: m\n  - name: local\n    url: http://127.0.0.1:2/v1\n    model: m\n    data_classes: [public, pii]\nroutes:\n  - name: a\n    utterances: [x]\n    targets: [open, local]\n    data_class: pii\n";
    let config = valid(yaml);
    let open = &config.backends[0];
    assert!(open.accepts(Some("public")));
    assert!(!open.accepts(Some("internal")) && !open.accepts(Some("pii")));
    assert!(open.accepts(None), "an unclassified request goes anywhere");
    assert_eq!(config.notes.len(), 1, "{:?}", config.notes);
    assert_eq!(config.notes[0].path, "backends[0].data_classes");
    assert!(config.notes[0].message.contains("only `public`"));
    // Without any class in the file, a backend without a list takes everything.
    let plain = valid(
        "backends:\n  - name: open\n    url: http://127.0.0.1:1/v1\n    model: m\nroutes:\n  - name: a\n    utterances: [x]\n    targets: [open]\n",
    );
    assert!(plain.backends[0].accepts(Some("restricted")));
    assert!(plain.notes.is_empty());
}

#[test]
fn the_class_order_is_the_default_or_the_files_and_unknown_classes_are_refused() {
    let config = valid("routes:\n  - name: a\n    utterances: [x]\n");
    assert_eq!(
        config.data_classes.describe(),
        "public < internal < pii < restricted"
    );
    let custom =
        valid("data_classes_order: [open, secret]\nroutes:\n  - name: a\n    utterances: [x]\n");
    assert_eq!(custom.data_classes.stricter("open", "secret"), "secret");
    assert_eq!(custom.data_classes.lowest(), "open");
    let problem = issue("data_classes_order: [a, a]\nroutes:\n  - name: a\n    utterances: [x]\n");
    assert_eq!(problem.path, "data_classes_order[1]");
    let problem = issue(
        "backends:\n  - name: b\n    url: http://127.0.0.1:1/v1\n    model: m\n    data_classes: [public, topsecret]\nroutes:\n  - name: a\n    utterances: [x]\n    targets: [b]\n",
    );
    assert_eq!(problem.path, "backends[0].data_classes[1]");
    assert_eq!(problem.line, Some(5));
    assert!(problem.message.contains("`topsecret`"));
}
