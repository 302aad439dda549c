//! `slipway builds` and `slipway build`: list builds, queue a manual one, show one with its
//! steps, print or follow its log, cancel or rebuild it, as `drone build ls` and `drone log
//! view` do.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::{json, Value};

use super::{text, time};
use crate::cli::{BuildArgs, BuildCommand, ClientArgs};
use crate::client::ApiClient;

/// Lines asked for per page of a log (the API's most).
const LOG_PAGE_LINES: usize = 10_000;

/// `slipway builds`: one line per build, newest first.
pub async fn list(args: ClientArgs, limit: u32) -> anyhow::Result<ExitCode> {
    let (client, project) = connect(&args).await?;
    let builds: Vec<Value> = client
        .get(&format!("/projects/{project}/builds?limit={limit}"))
        .await?;
    if builds.is_empty() {
        println!(
            "project {project} has no builds yet: a push to a branch its `branches` selects queues one, as does `slipway build --branch <branch>`"
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>6}  {:<10} {:<12} {:<24} {:<12} {:<20} {:>8}  QUEUED",
        "BUILD", "STATUS", "EVENT", "BRANCH", "COMMIT", "AUTHOR", "DURATION"
    );
    for build in &builds {
        println!(
            "{:>6}  {:<10} {:<12} {:<24} {:<12} {:<20} {:>8}  {}",
            build["number"].as_i64().unwrap_or_default(),
            text(&build["status"]),
            text(&build["event"]),
            text(&build["branch"]),
            short(&build["commit"]),
            text(&build["author"]).chars().take(20).collect::<String>(),
            duration(&build["started_at"], &build["finished_at"]),
            time(&build["queued_at"]),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `slipway build ...`: queues a manual build, or runs the subcommand.
pub async fn run(args: BuildArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        None => {
            let branch = args.branch.context("--branch is required")?;
            queue(&args.client, &branch, args.commit.as_deref()).await
        }
        Some(BuildCommand::Show { client, number }) => show(&client, number).await,
        Some(BuildCommand::Logs {
            client,
            number,
            step,
            follow,
        }) => {
            let printed = logs(&client, number, step.as_deref(), follow).await;
            match printed {
                // The reader of our output went away (`| head`): nothing more to do.
                Err(e) if is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
                printed => printed,
            }
        }
        Some(BuildCommand::Cancel { client, number }) => cancel(&client, number).await,
        Some(BuildCommand::Rebuild { client, number }) => rebuild(&client, number).await,
    }
}

/// The build's number alone on stdout, for scripts; what was queued on stderr.
async fn queue(args: &ClientArgs, branch: &str, commit: Option<&str>) -> anyhow::Result<ExitCode> {
    let (client, project) = connect(args).await?;
    let mut body = json!({ "branch": branch });
    if let Some(commit) = commit {
        body["commit"] = json!(commit);
    }
    let build: Value = client
        .post(&format!("/projects/{project}/builds"), &body)
        .await?;
    eprintln!(
        "queued build {} of {project}: branch {} at commit {} (manual)",
        build["number"],
        text(&build["branch"]),
        short(&build["commit"]),
    );
    println!("{}", build["number"]);
    Ok(ExitCode::SUCCESS)
}

async fn show(args: &ClientArgs, number: i64) -> anyhow::Result<ExitCode> {
    let (client, project) = connect(args).await?;
    let build: Value = client
        .get(&format!("/projects/{project}/builds/{number}"))
        .await?;
    println!("build {number} of {project}: {}", text(&build["status"]));
    let field = |name: &str, value: String| println!("  {name:<9} {value}");
    field("branch", text(&build["branch"]));
    field("commit", text(&build["commit"]));
    field("author", text(&build["author"]));
    field("message", text(&build["message"]));
    field("event", text(&build["event"]));
    if let Some(pr) = build["pull_request"].as_object() {
        field(
            "pull req",
            format!(
                "#{} {} ({} into {}{})",
                pr["number"],
                pr["title"].as_str().unwrap_or_default(),
                pr["source_branch"].as_str().unwrap_or_default(),
                pr["target_branch"].as_str().unwrap_or_default(),
                if pr["from_fork"] == true {
                    ", from a fork"
                } else {
                    ""
                }
            ),
        );
    }
    field("queued", time(&build["queued_at"]));
    field("started", time(&build["started_at"]));
    field("finished", time(&build["finished_at"]));
    field(
        "duration",
        duration(&build["started_at"], &build["finished_at"]),
    );
    if let Some(reason) = build["reason"].as_str() {
        field("reason", reason.to_string());
    }
    if let Some(skipped) = build["release_skipped"].as_str() {
        field("release", format!("none: {skipped}"));
    }
    let steps = build["steps"].as_array().cloned().unwrap_or_default();
    if steps.is_empty() {
        println!("no steps have run");
    } else {
        println!(
            "{:<24} {:<10} {:>4}  {:<19} {:>8}",
            "STEP", "STATUS", "EXIT", "STARTED", "DURATION"
        );
    }
    for step in &steps {
        let exit = step["exit_code"]
            .as_i64()
            .map_or("-".to_string(), |code| code.to_string());
        let took = match step["duration_ms"].as_i64() {
            Some(ms) => elapsed(ms),
            None => duration(&step["started_at"], &step["finished_at"]),
        };
        println!(
            "{:<24} {:<10} {:>4}  {:<19} {:>8}",
            text(&step["name"]),
            text(&step["status"]),
            exit,
            time(&step["started_at"]),
            took,
        );
    }
    for migration in build["migrations"].as_array().into_iter().flatten() {
        println!(
            "migration {} {} applied in {} ms",
            migration["version"],
            text(&migration["name"]),
            migration["elapsed_ms"]
        );
    }
    // A project without Bitbucket settings reports nothing: its reports end `unreported`.
    let reports = build["status_reports"].as_array().into_iter().flatten();
    for report in reports.filter(|report| report["outcome"] != "unreported") {
        let mut line = format!(
            "bitbucket status {}: {}",
            text(&report["status"]),
            report["outcome"].as_str().unwrap_or("being delivered")
        );
        if let Some(attempts) = report["attempts"].as_i64().filter(|n| *n > 0) {
            line.push_str(&format!(", {attempts} failed attempts"));
        }
        if let Some(error) = report["error"].as_str() {
            line.push_str(&format!(": {error}"));
        }
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the log so far, or with `follow` until the build ends (then the exit code says
/// whether it passed).
async fn logs(
    args: &ClientArgs,
    number: i64,
    step: Option<&str>,
    follow: bool,
) -> anyhow::Result<ExitCode> {
    let (client, project) = connect(args).await?;
    let path = format!("/projects/{project}/builds/{number}");
    let build: Value = client.get(&path).await?;
    if let Some(step) = step {
        check_step(&build, number, step)?;
    }
    let mut printer = LogPrinter {
        step: step.map(str::to_string),
        colour: std::io::stdout().is_terminal(),
        out: std::io::stdout(),
    };
    if !follow {
        let mut after = 0;
        loop {
            let page: Vec<Value> = client
                .get(&format!("{path}/logs?after={after}&limit={LOG_PAGE_LINES}"))
                .await?;
            let Some(last) = page.last() else {
                return Ok(ExitCode::SUCCESS);
            };
            after = last["seq"].as_i64().context("a log line without `seq`")?;
            for line in &page {
                printer.line(line)?;
            }
        }
    }
    let response = client
        .get_stream(&format!("{path}/logs?follow=true"))
        .await?;
    let mut bytes = response.bytes_stream();
    // Bytes, not text, until a whole frame is in: a chunk may end inside a character.
    let mut buffer: Vec<u8> = Vec::new();
    while let Some(chunk) = bytes.next().await {
        buffer.extend_from_slice(&chunk?);
        while let Some(end) = buffer.windows(2).position(|pair| pair == b"\n\n") {
            let frame: Vec<u8> = buffer.drain(..end + 2).collect();
            let (event, data) = parse_frame(&String::from_utf8_lossy(&frame));
            match event.as_deref() {
                Some("line") => printer.line(&serde_json::from_str(&data)?)?,
                Some("end") => {
                    let status = serde_json::from_str::<Value>(&data)?["status"]
                        .as_str()
                        .unwrap_or("unknown")
                        .to_string();
                    return ended(&client, &path, number, &status).await;
                }
                _ => {}
            }
        }
    }
    bail!(
        "the server closed the log stream before build {number} ended; `slipway build logs {number} --follow` follows it again"
    )
}

/// The end of a followed build, on stderr: its status and why it did not pass.
async fn ended(
    client: &ApiClient,
    path: &str,
    number: i64,
    status: &str,
) -> anyhow::Result<ExitCode> {
    if status == "passed" {
        eprintln!("build {number} passed");
        return Ok(ExitCode::SUCCESS);
    }
    let build: Value = client.get(path).await?;
    match build["reason"].as_str() {
        Some(reason) => eprintln!("build {number} {status}: {reason}"),
        None => eprintln!("build {number} {status}"),
    }
    Ok(ExitCode::FAILURE)
}

/// Refuses a step a finished build does not have, naming those it has (a running build's
/// steps are not all known yet).
fn check_step(build: &Value, number: i64, step: &str) -> anyhow::Result<()> {
    if matches!(build["status"].as_str(), Some("queued" | "running")) {
        return Ok(());
    }
    let steps: Vec<&str> = build["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|step| step["name"].as_str())
        .collect();
    if steps.contains(&step) {
        return Ok(());
    }
    match steps.is_empty() {
        true => bail!("build {number} has no step `{step}`: it ran none"),
        false => bail!(
            "build {number} has no step `{step}`; its steps: {}",
            steps.join(", ")
        ),
    }
}

/// Writes log lines: one step's bare, or every step's behind its name; colours only on a
/// terminal.
struct LogPrinter {
    step: Option<String>,
    colour: bool,
    out: std::io::Stdout,
}

impl LogPrinter {
    fn line(&mut self, line: &Value) -> std::io::Result<()> {
        let step = line["step"].as_str().unwrap_or("?");
        let text = line["line"].as_str().unwrap_or("");
        let text = match self.colour {
            true => Cow::Borrowed(text),
            false => strip_ansi(text),
        };
        match &self.step {
            Some(wanted) if wanted != step => Ok(()),
            Some(_) => writeln!(self.out, "{text}"),
            None => writeln!(self.out, "[{step}] {text}"),
        }
    }
}

async fn cancel(args: &ClientArgs, number: i64) -> anyhow::Result<ExitCode> {
    let (client, project) = connect(args).await?;
    let build: Value = client
        .post(
            &format!("/projects/{project}/builds/{number}/cancel"),
            &json!({}),
        )
        .await?;
    match build["status"].as_str().unwrap_or("unknown") {
        "cancelled" => println!("build {number} cancelled"),
        "running" => println!(
            "build {number} is running: the server running it stops it within a second and tears it down"
        ),
        ended => println!("build {number} had already ended: {ended}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The new build's number alone on stdout, for scripts; what was queued on stderr.
async fn rebuild(args: &ClientArgs, number: i64) -> anyhow::Result<ExitCode> {
    let (client, project) = connect(args).await?;
    let build: Value = client
        .post(
            &format!("/projects/{project}/builds/{number}/rebuild"),
            &json!({}),
        )
        .await?;
    eprintln!(
        "queued build {} of {project}: build {number}'s commit {} on branch {} again",
        build["number"],
        short(&build["commit"]),
        text(&build["branch"]),
    );
    println!("{}", build["number"]);
    Ok(ExitCode::SUCCESS)
}

async fn connect(args: &ClientArgs) -> anyhow::Result<(ApiClient, String)> {
    let client = ApiClient::new(args)?;
    let project = client.project(args.project.as_deref()).await?;
    Ok((client, project))
}

/// The event name and the data of one server-sent event frame.
fn parse_frame(frame: &str) -> (Option<String>, String) {
    let mut event = None;
    let mut data: Vec<&str> = Vec::new();
    for line in frame.lines() {
        let value = |field: &str| {
            line.strip_prefix(field)
                .map(|v| v.strip_prefix(' ').unwrap_or(v))
        };
        if let Some(name) = value("event:") {
            event = Some(name.to_string());
        } else if let Some(part) = value("data:") {
            data.push(part);
        }
    }
    (event, data.join("\n"))
}

/// A commit id's first 12 digits.
fn short(commit: &Value) -> String {
    text(commit).chars().take(12).collect()
}

/// The time between two RFC 3339 times, up to now while `end` is absent; `-` before `start`.
fn duration(start: &Value, end: &Value) -> String {
    let at = |value: &Value| {
        value
            .as_str()
            .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
            .map(|at| at.with_timezone(&Utc))
    };
    match at(start) {
        Some(start) => {
            let end = at(end).unwrap_or_else(Utc::now);
            elapsed((end - start).num_milliseconds())
        }
        None => "-".to_string(),
    }
}

/// Milliseconds as `0.8s`, `42s`, `3m05s` or `2h10m`.
fn elapsed(ms: i64) -> String {
    let ms = ms.max(0);
    let seconds = ms / 1000;
    match seconds {
        0..10 => format!("{:.1}s", ms as f64 / 1000.0),
        10..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
    }
}

/// `text` without ANSI escape sequences: CSI (colours, cursor moves), OSC (titles, links)
/// and the short escapes (charset choices, two-character ones).
fn strip_ansi(text: &str) -> Cow<'_, str> {
    const ESC: char = '\u{1b}';
    if !text.contains(ESC) {
        return Cow::Borrowed(text);
    }
    let mut stripped = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != ESC {
            stripped.push(c);
            continue;
        }
        match chars.next() {
            // Parameters and intermediates, up to the final character in `@`..=`~`.
            Some('[') => {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            // Up to BEL or the string terminator ESC `\`.
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\u{7}' {
                        break;
                    }
                    if c == ESC {
                        chars.next_if_eq(&'\\');
                        break;
                    }
                }
            }
            // Intermediates (like `(` of a charset choice), then the final character.
            Some(' '..='/') => {
                while chars.next_if(|c| (' '..='/').contains(c)).is_some() {}
                chars.next();
            }
            _ => {}
        }
    }
    Cow::Owned(stripped)
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_cursor_moves_and_links_are_stripped() {
        assert_eq!(strip_ansi("plain"), "plain");
        assert_eq!(
            strip_ansi("\u{1b}[1;32mok\u{1b}[0m done\u{1b}[K"),
            "ok done"
        );
        assert_eq!(
            strip_ansi("see \u{1b}]8;;https://acme.test\u{7}docs\u{1b}]8;;\u{1b}\\ here"),
            "see docs here"
        );
        assert_eq!(strip_ansi("a\u{1b}(Bb"), "ab");
        assert_eq!(strip_ansi("cut\u{1b}["), "cut");
    }

    #[test]
    fn frames_give_their_event_and_data() {
        let (event, data) = parse_frame("event: line\ndata: {\"seq\":1}\n\n");
        assert_eq!(event.as_deref(), Some("line"));
        assert_eq!(data, "{\"seq\":1}");
        let (event, data) = parse_frame(": keep-alive\n\n");
        assert_eq!((event, data), (None, String::new()));
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(elapsed(840), "0.8s");
        assert_eq!(elapsed(42_000), "42s");
        assert_eq!(elapsed(185_000), "3m05s");
        assert_eq!(elapsed(7_800_000), "2h10m");
        let start = json!("2026-01-01T10:00:00Z");
        assert_eq!(duration(&start, &json!("2026-01-01T10:01:30.5Z")), "1m30s");
        assert_eq!(duration(&Value::Null, &Value::Null), "-");
    }

    #[test]
    fn a_step_a_finished_build_lacks_is_refused_naming_its_steps() {
        let build =
            json!({ "status": "passed", "steps": [{ "name": "work" }, { "name": "test" }] });
        assert!(check_step(&build, 3, "work").is_ok());
        let error = check_step(&build, 3, "lint").unwrap_err().to_string();
        assert_eq!(error, "build 3 has no step `lint`; its steps: work, test");
        let running = json!({ "status": "running", "steps": [] });
        assert!(check_step(&running, 3, "lint").is_ok());
    }
}
