//! `eval` and `fit` on labelled conversations (`tests/data/conversations.jsonl`: seven
//! dialogues over the four routes of `tests/data/conversation-routes.yaml`, each user turn
//! a line with the messages up to it, its `turn` and whether it `switch`es domain).

use crate::{json_of, run, stderr, stdout};
use serde_json::Value;
use std::path::{Path, PathBuf};

const ROUTES: &str = "tests/data/conversation-routes.yaml";
const DATA: &str = "tests/data/conversations.jsonl";

/// The data file's lines.
fn lines() -> Vec<Value> {
    std::fs::read_to_string(crate::common::repo().join(DATA))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A copy of the conversation routes in `dir` with `extra` YAML appended.
fn routes_with(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let routes = std::fs::read_to_string(crate::common::repo().join(ROUTES)).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, format!("{routes}\n{extra}")).unwrap();
    path
}

fn eval_json(config: &str, data: &str) -> Value {
    json_of(&run(&[
        "eval", "--config", config, "--data", data, "--json",
    ]))
}

fn acc(report: &Value, key: &str) -> f64 {
    report["conversation"][key]
        .as_f64()
        .unwrap_or_else(|| panic!("conversation.{key} in {report}"))
}

#[test]
fn the_data_file_has_dialogues_with_first_turns_follow_ups_and_switches() {
    let lines = lines();
    let turns: Vec<&Value> = lines
        .iter()
        .filter(|l| l.get("messages").is_some())
        .collect();
    assert!((30..=60).contains(&lines.len()) && turns.len() >= 30);
    let first = turns.iter().filter(|l| l["turn"] == 0).count();
    let switches = turns.iter().filter(|l| l["switch"] == true).count();
    assert!(
        first >= 5 && switches >= 2,
        "{first} first turns, {switches} switches"
    );
    // Each line's messages end with the user turn it labels, and a switch is a change of
    // label from the previous turn of the same dialogue.
    let mut previous: Option<&Value> = None;
    for line in &turns {
        let messages = line["messages"].as_array().unwrap();
        assert_eq!(messages.last().unwrap()["role"], "user", "{line}");
        let switched = match previous {
            Some(p) if line["turn"].as_u64().unwrap() > 0 => p["route"] != line["route"],
            _ => false,
        };
        assert_eq!(line["switch"], switched, "{line}");
        previous = Some(line);
    }
}

#[test]
fn eval_reports_accuracy_by_kind_of_turn_and_the_conversation_lifts_follow_ups() {
    let dir = tempfile::tempdir().unwrap();
    let context = eval_json(ROUTES, DATA);
    let c = context["conversation"].as_object().unwrap();
    let mut keys: Vec<&str> = c.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "all_acc",
            "first_turn_acc",
            "follow_up_acc",
            "items",
            "switch_acc"
        ]
    );
    // The plain `text` lines are prompts, not turns of a conversation.
    let turns = lines()
        .iter()
        .filter(|l| l.get("messages").is_some())
        .count();
    assert_eq!(c["items"].as_u64(), Some(turns as u64), "{context}");

    let last = routes_with(dir.path(), "last.yaml", "conversation:\n  mode: last\n");
    let last = eval_json(last.to_str().unwrap(), DATA);
    assert_eq!(last["conversation"]["items"], c["items"]);
    let (with, without) = (acc(&context, "follow_up_acc"), acc(&last, "follow_up_acc"));
    assert!(
        with >= without + 0.3,
        "follow-ups: {with} with the conversation, {without} alone"
    );
    assert!(with >= 0.9, "follow-ups with the conversation: {with}");
    assert!(acc(&context, "all_acc") > acc(&last, "all_acc"));
    // A first turn has nothing before it: the modes agree on it.
    assert_eq!(
        acc(&context, "first_turn_acc"),
        acc(&last, "first_turn_acc")
    );
    assert!(acc(&context, "switch_acc") >= 0.8, "{context}");

    let out = run(&["eval", "--config", ROUTES, "--data", DATA]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("({turns} turns)")) && text.contains("follow-up"),
        "{text}"
    );
}

#[test]
fn eval_of_prompts_without_conversations_reports_no_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("plain.jsonl");
    let plain: String = lines()
        .iter()
        .filter(|l| l.get("text").is_some())
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!plain.is_empty());
    std::fs::write(&data, plain).unwrap();
    let report = eval_json(ROUTES, data.to_str().unwrap());
    assert!(report.get("conversation").is_none(), "{report}");
}

#[test]
fn eval_names_the_line_of_a_conversation_without_a_user_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("bad.jsonl");
    let good = &lines()[0];
    std::fs::write(
        &data,
        format!(
            "{good}\n{}\n",
            r#"{"messages": [{"role": "assistant", "content": "Hi!"}], "route": "weather", "turn": 0}"#
        ),
    )
    .unwrap();
    let out = run(&["eval", "--config", ROUTES, "--data", data.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("bad.jsonl:2") && err.contains("user message"),
        "{err}"
    );
}

#[test]
fn fit_on_conversations_keeps_the_thresholds_and_writes_conversation_settings_that_load() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fitted.yaml");
    let out = out.to_str().unwrap();
    let fit = run(&["fit", "--config", ROUTES, "--data", DATA, "--out", out]);
    assert!(fit.status.success(), "{}", stderr(&fit));
    let text = stdout(&fit);
    assert!(text.contains("thresholds kept"), "{text}");
    assert!(
        text.contains("\nconversation: ") && text.contains("settings tried"),
        "{text}"
    );

    let written = std::fs::read_to_string(out).unwrap();
    assert!(written.contains("\nconversation:"), "{written}");
    assert!(written.contains("threshold: 0.35"), "{written:.600}");
    let validate = run(&["validate", "--config", out]);
    assert!(validate.status.success(), "{}", stderr(&validate));

    let json_out = dir.path().join("fitted-json.yaml");
    let report = json_of(&run(&[
        "fit",
        "--config",
        ROUTES,
        "--data",
        DATA,
        "--out",
        json_out.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(report["thresholds_fitted"], false, "{report}");
    let c = &report["conversation"];
    for key in [
        "before",
        "after",
        "tried",
        "switch_score",
        "switch_margin",
        "temperature",
        "follow_up_weight",
    ] {
        assert!(c[key].is_number(), "conversation.{key} in {report}");
    }
    assert!(c["tried"].as_u64() > Some(1));
    assert!(c["after"].as_f64() >= c["before"].as_f64(), "{c}");
    // Eval on the written config reproduces what the fit said it would do.
    let eval = eval_json(out, DATA);
    assert_eq!(eval["conversation"], report["after"]["conversation"]);
    assert_eq!(eval["overall_acc"], report["after"]["overall_acc"]);
    // The fit's accuracy counts every prompt (the plain `text` lines too).
    assert_eq!(
        eval["overall_acc"].as_f64(),
        c["after"].as_f64(),
        "{report}"
    );
}

#[test]
fn fit_on_conversations_with_a_prompt_labelled_null_fits_the_thresholds_too() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("with-oos.jsonl");
    let mut text = std::fs::read_to_string(crate::common::repo().join(DATA)).unwrap();
    text.push_str("{\"text\": \"zxqv blorf 7731\", \"route\": null}\n");
    text.push_str("{\"text\": \"Translate this paragraph into German\", \"route\": null}\n");
    std::fs::write(&data, text).unwrap();
    let out = dir.path().join("fitted.yaml");
    let report = json_of(&run(&[
        "fit",
        "--config",
        ROUTES,
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(report["thresholds_fitted"], true, "{report}");
    assert!(report["conversation"].is_object(), "{report}");
    assert!(
        run(&["validate", "--config", out.to_str().unwrap()])
            .status
            .success()
    );
}
