//! The command line: `serve`, `classify`, `embed`, `validate`, `bench` (`eval` and `fit`
//! live in `quality.rs`). Doc comments here are the `--help` text.

mod chat;
mod experiments;
mod fit_report;
mod quality;
mod serve_args;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use semroute::Router;
use semroute::config::{Config, EncoderConfig};
use semroute::embed::{Encoder, files};
use semroute::http::classify::ClassifyResponse;
use semroute::serve;
use serde::Serialize;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// semroute: a semantic router for LLM applications.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service: POST /classify, the OpenAI-compatible proxy, the debugging
    /// page at GET /, /admin/*, /routes, /metrics, /healthz, /readyz.
    Serve(serve_args::ServeArgs),
    /// Classify each TEXT (or each line of stdin) and print the route chosen.
    Classify {
        /// The routes file.
        #[arg(long, short)]
        config: PathBuf,
        /// One JSON object per input, the same shape as POST /classify.
        #[arg(long)]
        json: bool,
        /// Nearest utterances to retrieve (default: the config's top_k).
        #[arg(long)]
        top_k: Option<usize>,
        /// Each input is a conversation: a JSON list of chat messages (or {"messages":
        /// [...]}); its last user message is classified with the turns before it.
        #[arg(long)]
        messages: bool,
        /// Texts to classify; without any, lines are read from stdin.
        texts: Vec<String>,
    },
    /// Print one JSON line per TEXT (or stdin line): {"text", "tokens", "embedding"}.
    Embed {
        /// A routes file whose `encoder` section to use (default: all-MiniLM-L6-v2 on CPU).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Texts to embed; without any, lines are read from stdin.
        texts: Vec<String>,
    },
    /// Measure routing quality on labelled prompts (JSONL: {"text", "route": name | null}).
    Eval {
        #[command(flatten)]
        args: LabelledArgs,
    },
    /// Tune the global and per-route thresholds on labelled prompts and write a config
    /// with the fitted values (before/after metrics, with a cross-validated estimate); some
    /// prompts must be labelled null.
    Fit {
        #[command(flatten)]
        args: LabelledArgs,
        /// Where to write the fitted config (a new file: comments are not carried over).
        #[arg(long)]
        out: PathBuf,
        /// Also fine-tune the encoder on the route utterances (minutes on a CPU); the tuned
        /// model is written beside --out (OUT with the extension `.model`).
        #[arg(long)]
        tune_encoder: bool,
        /// Passes over the routes when tuning the encoder.
        #[arg(long, default_value_t = semroute::offline::tune::TuneOptions::default().epochs)]
        epochs: usize,
    },
    /// Measure embedding and classification speed on this machine.
    Bench {
        /// The routes file (its utterances are embedded to build the index).
        #[arg(long, short)]
        config: PathBuf,
        /// JSONL prompts (their `text` fields), e.g. CLINC150's val.jsonl.
        #[arg(long)]
        data: PathBuf,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Run the encoder on this many threads (overrides `encoder.threads`).
        #[arg(long)]
        threads: Option<usize>,
        /// Run the encoder in this precision: f32, bf16 or int8 (overrides
        /// `encoder.precision`).
        #[arg(long)]
        precision: Option<String>,
    },
    /// Print a running service's experiments: per variant its requests, errors, latency,
    /// time to first byte and feedback with 95% intervals, and whether the variants differ
    /// (GET /admin/experiments).
    Experiments {
        /// The service's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// The environment variable holding the admin key (needed off loopback).
        #[arg(long, value_name = "VAR")]
        admin_key_env: Option<String>,
        /// Print the report's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check a routes file and report every problem, without loading the model.
    Validate {
        /// The routes file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// The files `eval` and `fit` work on.
#[derive(Debug, clap::Args)]
pub struct LabelledArgs {
    /// The routes file.
    #[arg(long, short)]
    config: PathBuf,
    /// Labelled prompts (JSONL); `"route": null` marks a prompt no route should match.
    #[arg(long)]
    data: PathBuf,
    /// Print one JSON object instead of a report.
    #[arg(long)]
    json: bool,
    /// Weigh the labelled prompts as if this share of the traffic (between 0 and 1, e.g.
    /// 0.2) were out of scope, whatever their own share: overall accuracy, precision and
    /// fit's thresholds then suit the mix a deployment expects.
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    oos_share: Option<semroute::offline::weights::OosShare>,
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve_args::run(args),
        Command::Classify {
            config,
            json,
            top_k,
            messages,
            texts,
        } => classify(&config, json, top_k, messages, texts),
        Command::Embed { config, texts } => embed(config.as_deref(), texts),
        Command::Validate { config } => validate(&config),
        Command::Experiments {
            url,
            admin_key_env,
            json,
        } => experiments::run(&url, admin_key_env.as_deref(), json),
        Command::Bench {
            config,
            data,
            json,
            threads,
            precision,
        } => bench(&config, &data, json, threads, precision.as_deref()),
        Command::Eval { args } => {
            quality::eval(&args.config, &args.data, args.json, args.oos_share)
        }
        Command::Fit {
            args,
            out,
            tune_encoder,
            epochs,
        } => quality::fit(quality::FitOptions {
            config: &args.config,
            data: &args.data,
            out: &out,
            json: args.json,
            oos_share: args.oos_share,
            tune: tune_encoder.then(|| semroute::offline::tune::TuneOptions {
                epochs,
                ..semroute::offline::tune::TuneOptions::default()
            }),
        }),
    }
}

fn validate(path: &Path) -> Result<ExitCode> {
    let config = Config::load(path)?;
    for note in &config.notes {
        let at = match note.line {
            Some(line) => format!("{}:{line}", path.display()),
            None => path.display().to_string(),
        };
        println!("{at}: note: {}: {}", note.path, note.message);
        if let Some(hint) = &note.hint {
            println!("  hint: {hint}");
        }
    }
    let utterances: usize = config.routes.iter().map(|r| r.utterances.len()).sum();
    println!(
        "{}: ok ({} routes, {} utterances{})",
        path.display(),
        config.routes.len(),
        utterances,
        match config.default_route {
            Some(id) => format!(", default route `{}`", config.route(id).name),
            None => String::new(),
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn load_encoder(encoder: &EncoderConfig, config_path: Option<&Path>) -> Result<Encoder> {
    let files = files::resolve(encoder, &serve::model_roots(config_path))?;
    Ok(Encoder::load_files(files, encoder)?)
}

/// The inputs: the arguments, or else stdin's lines.
fn inputs(texts: Vec<String>) -> Box<dyn Iterator<Item = Result<String>>> {
    if texts.is_empty() {
        Box::new(
            std::io::stdin()
                .lock()
                .lines()
                .map(|line| line.context("cannot read stdin")),
        )
    } else {
        Box::new(texts.into_iter().map(Ok))
    }
}

fn classify(
    path: &Path,
    json: bool,
    top_k: Option<usize>,
    messages: bool,
    texts: Vec<String>,
) -> Result<ExitCode> {
    let config = Config::load(path)?;
    if let Some(k) = top_k {
        anyhow::ensure!(
            (1..=semroute::config::MAX_TOP_K).contains(&k),
            "--top-k must be between 1 and {}",
            semroute::config::MAX_TOP_K
        );
    }
    let encoder = load_encoder(&config.encoder, Some(path))?;
    let cache_dir = semroute::embed::cache::default_dir();
    let router = Router::build_cached(config, &encoder, cache_dir.as_deref())?;
    let mut out = std::io::stdout().lock();
    let mut failed = false;
    for text in inputs(texts) {
        let text = text?;
        if messages {
            let started = Instant::now();
            match chat::classify(&router, &encoder, &text) {
                Ok((last, mut c)) => {
                    c.timing_us.total = started.elapsed().as_micros() as u64;
                    let result = ClassifyResponse::new(&c, router.config());
                    write_result(&mut out, json, &last, &result)?;
                }
                Err(err) => {
                    failed = true;
                    report_error(&mut out, json, &text, &err)?;
                }
            }
            continue;
        }
        if !semroute::embed::has_visible_text(&text) {
            failed = true;
            report_error(
                &mut out,
                json,
                &text,
                "the text to classify is empty (or only invisible characters)",
            )?;
            continue;
        }
        let started = Instant::now();
        let embedding = match encoder.embed_one(&text) {
            Ok(e) => e,
            Err(err) => {
                failed = true;
                report_error(&mut out, json, &text, &err.to_string())?;
                continue;
            }
        };
        let embed_us = started.elapsed().as_micros() as u64;
        let mut result = router.classify(&text, &embedding, top_k);
        result.timing_us.embed = embed_us;
        result.timing_us.total = started.elapsed().as_micros() as u64;
        let result = ClassifyResponse::new(&result, router.config());
        write_result(&mut out, json, &text, &result)?;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn report_error(out: &mut impl Write, json: bool, text: &str, message: &str) -> Result<()> {
    if json {
        let body = serde_json::json!({"text": text, "error": {"code": "invalid_request", "message": message}});
        writeln!(out, "{body}")?;
    } else {
        writeln!(out, "{text:?}\n  error: {message}")?;
    }
    Ok(())
}

fn write_result(
    out: &mut impl Write,
    json: bool,
    text: &str,
    result: &ClassifyResponse,
) -> Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(result)?)?;
        return Ok(());
    }
    write_human(out, text, result)?;
    if let Some(c) = &result.conversation {
        let outcome = serde_json::to_value(c.outcome)?;
        writeln!(
            out,
            "     conversation: {} (was {}; alone: {})",
            outcome.as_str().unwrap_or("?"),
            c.previous_route.as_deref().unwrap_or("no route"),
            c.without_context.route.as_deref().unwrap_or("no route"),
        )?;
    }
    Ok(())
}

fn write_human(out: &mut impl Write, text: &str, result: &ClassifyResponse) -> Result<()> {
    let score = result
        .score
        .map_or_else(|| "-".to_string(), |s| format!("{s:.3}"));
    let route = result.route.as_deref().unwrap_or("(none)");
    let how = serde_json::to_value(result.matched_by)?;
    let how = how.as_str().unwrap_or("?");
    writeln!(out, "{text:?}")?;
    writeln!(
        out,
        "  -> {route}  [{how}, score {score}, threshold {:.2}, {} tokens, {} us]",
        result.threshold, result.tokens, result.timing_us.total
    )?;
    if let Some(hit) = result.overrides.first() {
        let kind = serde_json::to_value(hit.kind)?;
        writeln!(
            out,
            "     {} {:?} of route {}",
            kind.as_str().unwrap_or("override"),
            hit.rule,
            hit.route
        )?;
    }
    let runners: Vec<String> = result
        .candidates
        .iter()
        .filter(|c| Some(c.route.as_str()) != result.route.as_deref())
        .take(3)
        .map(|c| format!("{} {:.3}", c.route, c.score))
        .collect();
    if !runners.is_empty() {
        writeln!(out, "     runners-up: {}", runners.join(", "))?;
    }
    Ok(())
}

#[derive(Serialize)]
struct EmbedLine<'a> {
    text: &'a str,
    tokens: usize,
    embedding: &'a [f32],
}

fn embed(config_path: Option<&Path>, texts: Vec<String>) -> Result<ExitCode> {
    let encoder_config = match config_path {
        Some(path) => Config::load(path)?.encoder,
        None => EncoderConfig::default(),
    };
    let encoder = load_encoder(&encoder_config, config_path)?;
    let mut out = std::io::stdout().lock();
    for text in inputs(texts) {
        let text = text?;
        let embedding = encoder.embed_one(&text)?;
        let line = EmbedLine {
            text: &text,
            tokens: embedding.tokens,
            embedding: &embedding.vector,
        };
        writeln!(out, "{}", serde_json::to_string(&line)?)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Every non-blank JSONL line as (its `file:line`, its string `text`, the whole object); a
/// line that is not JSON with a string `text` is an error naming its line.
fn read_jsonl(path: &Path) -> Result<Vec<(String, String, serde_json::Value)>> {
    let content =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut records = Vec::new();
    for (i, line) in content.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{at}: not valid JSON"))?;
        let text = match (value.get("text"), value.get("messages")) {
            (Some(serde_json::Value::String(text)), None) => text.clone(),
            (None, Some(serde_json::Value::Array(messages))) => {
                semroute::route::split_chat(messages)
                    .filter(|(_, last)| semroute::embed::has_visible_text(last))
                    .map(|(_, last)| last.into_owned())
                    .with_context(|| {
                        format!("{at}: `messages` has no user message with visible text")
                    })?
            }
            (None, Some(_)) => anyhow::bail!("{at}: `messages` must be a list of chat messages"),
            (Some(_), Some(_)) => anyhow::bail!("{at}: give either `text` or `messages`, not both"),
            _ => anyhow::bail!(
                "{at}: no string field `text` (or `messages`, a list of chat messages)"
            ),
        };
        records.push((at, text, value));
    }
    anyhow::ensure!(!records.is_empty(), "{} has no prompts", path.display());
    Ok(records)
}

/// The `text` of every JSONL line.
pub fn read_jsonl_texts(path: &Path) -> Result<Vec<String>> {
    Ok(read_jsonl(path)?
        .into_iter()
        .map(|(_, text, _)| text)
        .collect())
}

fn bench(
    config_path: &Path,
    data: &Path,
    json: bool,
    threads: Option<usize>,
    precision: Option<&str>,
) -> Result<ExitCode> {
    let mut config = Config::load(config_path)?;
    if let Some(threads) = threads {
        anyhow::ensure!(
            (1..=1024).contains(&threads),
            "--threads must be from 1 to 1024"
        );
        config.encoder.threads = Some(threads);
    }
    if let Some(precision) = precision {
        config.encoder.precision = match precision.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" => semroute::config::Precision::F32,
            "bf16" | "bfloat16" => semroute::config::Precision::Bf16,
            "int8" | "i8" => semroute::config::Precision::Int8,
            other => anyhow::bail!("unknown --precision `{other}`: write f32, bf16 or int8"),
        };
    }
    let prompts = read_jsonl_texts(data)?;
    let encoder = load_encoder(&config.encoder, Some(config_path))?;
    let report = semroute::offline::bench::run(config, &encoder, &prompts)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "backend              {} on {} thread(s), layer weights {:.1} MB",
            report.backend, report.threads, report.layer_weights_mb
        );
        println!(
            "prompts              {} (from {})",
            report.prompts,
            data.display()
        );
        let on = format!("[{}, {} threads]", report.backend, report.threads);
        println!(
            "embed single p50     {:.3} ms {on}",
            report.embed_single_p50_ms
        );
        println!(
            "embed single p99     {:.3} ms {on}",
            report.embed_single_p99_ms
        );
        println!(
            "embed batch          {:.0} prompts/s (batches of 64) {on}",
            report.embed_batch_per_s
        );
        println!(
            "classify p50         {:.3} ms (embed + search + decide) {on}",
            report.classify_p50_ms
        );
        println!(
            "index build          {:.2} s ({} utterances)",
            report.index_build_s, report.utterances
        );
    }
    Ok(ExitCode::SUCCESS)
}
