//! Build logs as users see them: a 200 MB flood is capped, paged and drained with flat server
//! memory; secrets are masked across the line cut and over several lines; NUL and invalid
//! UTF-8 keep every line.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::builds::{commit_all, git, hello_config, push, push_body, wait_for_build};
use crate::helpers::{read_token, sign, TestApp};
use crate::server_process::start;

/// The fields of a log line the flood test checks.
#[derive(serde::Deserialize)]
struct LineSeen {
    seq: i64,
    line: String,
}

/// A repository holding only `pipeline` as its `.slipway.yml`.
fn repository_with(pipeline: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".slipway.yml"), pipeline).unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    let commit = commit_all(dir.path(), "pipeline");
    (dir, commit)
}

/// Every line of a build's log, read page by page; also how many pages it took.
async fn all_lines(
    http: &reqwest::Client,
    address: &str,
    token: &str,
    number: i64,
    limit: usize,
) -> (Vec<Value>, usize) {
    let mut lines: Vec<Value> = Vec::new();
    let mut pages = 0;
    loop {
        let after = lines.last().map_or(0, |line| line["seq"].as_i64().unwrap());
        let response = http
            .get(format!(
                "{address}/api/v1/projects/hello/builds/{number}/logs?after={after}&limit={limit}"
            ))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let page: Vec<Value> = response.json().await.unwrap();
        if page.is_empty() {
            return (lines, pages);
        }
        pages += 1;
        assert!(page.len() <= limit);
        assert_eq!(
            page[0]["seq"].as_i64().unwrap(),
            after + 1,
            "pages follow on"
        );
        lines.extend(page);
    }
}

fn texts<'a>(lines: &'a [Value], step: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter(|line| line["step"] == step)
        .map(|line| line["line"].as_str().unwrap())
        .collect()
}

/// The server's peak resident memory so far, in KiB (VmHWM).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/<pid>/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `docker inspect` of a container: its state and when it finished, or `None` once removed.
fn container_state(name: &str) -> Option<(String, String)> {
    let output = Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.FinishedAt}}",
            name,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let (status, finished) = text.trim().split_once(' ')?;
    Some((status.to_string(), finished.to_string()))
}

#[tokio::test]
async fn a_200_mb_flood_is_capped_paged_and_drained_with_flat_server_memory() {
    const CAP: usize = 4 * 1024 * 1024;
    let (repo, commit) = repository_with(
        "steps:\n  - name: flood\n    image: slipway/debian:bookworm\n    commands:\n      - yes | head -c 200000000\n",
    );
    let dir = tempfile::tempdir().unwrap();
    // The embedded cluster runs as user postgres, which must be able to reach the data dir.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.path().join("slipway.toml"), hello_config(repo.path())).unwrap();
    let server = start(dir.path());
    let pid = server.child.id();
    let token = read_token(&dir.path().join(".slipway"));
    let http = reqwest::Client::new();
    let rss_at_start = peak_rss_kib(pid);

    let body = push_body("acme/hello", "main", &commit);
    let queued: Value = http
        .post(format!("{}/hooks/bitbucket", server.address))
        .header("X-Event-Key", "repo:push")
        .header("X-Hub-Signature", sign("hello-secret", &body))
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let number = queued["queued"][0]["number"].as_i64().unwrap();
    let build_url = format!("{}/api/v1/projects/hello/builds/{number}", server.address);

    // Watch the flood's container and the build until the build ends.
    let mut container = None;
    let mut container_seen = false;
    let mut container_end: Option<(Instant, Option<String>)> = None;
    let started = Instant::now();
    let build = loop {
        let build: Value = http
            .get(&build_url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if container.is_none() {
            if let Some(id) = build["id"].as_str() {
                container = Some(format!(
                    "slipway-hello-{number}-{}-flood",
                    id.replace('-', "")
                ));
            }
        }
        if container_end.is_none() {
            match container.as_deref().map(container_state) {
                Some(Some((status, finished))) if status == "exited" => {
                    container_end = Some((Instant::now(), Some(finished)))
                }
                Some(Some(_)) => container_seen = true,
                Some(None) if container_seen => container_end = Some((Instant::now(), None)),
                _ => {}
            }
        }
        if !matches!(build["status"].as_str(), Some("queued" | "running")) {
            break build;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the build still runs after 10 minutes: {build}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let build_end = Instant::now();
    assert_eq!(build["status"], "passed", "{build}");
    let (seen_end, finished_at) = container_end.expect("the flood's container was seen ending");
    // Docker's own finish time when the test saw the container exited, else when it saw it gone.
    let after_container = match finished_at {
        Some(finished) => {
            let finished = chrono::DateTime::parse_from_rfc3339(&finished).unwrap();
            let build_finished =
                chrono::DateTime::parse_from_rfc3339(build["finished_at"].as_str().unwrap())
                    .unwrap();
            (build_finished - finished).to_std().unwrap_or_default()
        }
        None => build_end - seen_end,
    };
    assert!(
        after_container < Duration::from_secs(30),
        "the build ended {after_container:?} after its container"
    );

    // Page through the whole log, keeping only what the checks need.
    let notice = "[slipway] log cut at 4194304 bytes: the rest of this step's output is not kept";
    let paging = Instant::now();
    let (mut after, mut pages, mut stored, mut last) = (0, 0, 0, String::new());
    loop {
        let page: Vec<LineSeen> = http
            .get(format!(
                "{}/api/v1/projects/hello/builds/{number}/logs?after={after}&limit=10000",
                server.address
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let Some(tail) = page.last() else { break };
        assert_eq!(page[0].seq, after + 1, "pages follow on");
        assert!(page.len() <= 10_000);
        for line in &page {
            stored += line.line.len() + 1;
            let expected = match line.seq {
                1 => "+ yes | head -c 200000000",
                _ if line.line == notice => notice,
                _ => "y",
            };
            assert_eq!(line.line, expected, "line {}", line.seq);
        }
        (after, last, pages) = (tail.seq, tail.line.clone(), pages + 1);
    }
    let paging = paging.elapsed();
    assert_eq!(last, notice);
    assert!(
        stored <= CAP + notice.len() + 1,
        "{stored} bytes stored for a cap of {CAP}"
    );
    assert!(stored > CAP - 100, "the log holds the output up to the cap");

    let rss_peak = peak_rss_kib(pid);
    eprintln!(
        "flood: the build ended {after_container:?} after its container; {after} lines, {stored} bytes in {pages} pages read in {paging:?}; server VmHWM {rss_at_start} KiB at start, {rss_peak} KiB at the end"
    );
    assert!(
        rss_peak < 200 * 1024,
        "the server's peak RSS was {rss_peak} KiB"
    );
    drop(server);
}

/// A project `hello` building `repo`, with these `[projects.secrets]`.
fn config_with_secrets(repo: &Path, secrets: &str) -> String {
    format!("{}[projects.secrets]\n{secrets}", hello_config(repo))
}

#[tokio::test]
async fn secrets_are_masked_across_the_line_cut_and_over_several_lines() {
    const TOKEN: &str = "tok-3f9a8b7c6d5e4f30";
    let (repo, commit) = repository_with(concat!(
        "steps:\n  - name: leak\n    image: slipway/debian:bookworm\n    secrets: [TOKEN, MULTI]\n    commands:\n",
        // 65,530 bytes, then the token: the 64 KiB line cut falls inside it.
        "      - head -c 65530 /dev/zero | tr '\\0' x; printf '%s' \"$TOKEN\"; echo\n",
        "      - printf 'key\\n%s\\nend\\n' \"$MULTI\"\n",
    ));
    let config = config_with_secrets(
        repo.path(),
        &format!("TOKEN = \"{TOKEN}\"\nMULTI = \"first-secret-line\\nsecond-secret-line\"\n"),
    );
    let app = TestApp::spawn(&config).await;
    let number = push(&app, "main", &commit).await;
    let build = wait_for_build(&app, number, Duration::from_secs(120)).await;
    assert_eq!(build["status"], "passed", "{build}");

    let (lines, _) = all_lines(&app.http, &app.address, &app.token, number, 1000).await;
    let leak = texts(&lines, "leak");
    let joined = leak.concat();
    for part in [
        TOKEN,
        "tok-3f",
        "9a8b7c6d5e4f30",
        "first-secret",
        "second-secret",
    ] {
        assert!(
            leak.iter().all(|line| !line.contains(part)),
            "`{part}` is in the log: {:?}",
            leak.iter()
                .map(|l| &l[l.len().saturating_sub(40)..])
                .collect::<Vec<_>>()
        );
    }
    assert!(
        joined.contains(&format!("{}****", "x".repeat(100))),
        "the token after the filler is masked"
    );
    let key = leak.iter().position(|line| *line == "key").unwrap();
    assert_eq!(leak[key..], ["key", "****", "end"]);
    app.stop().await;
}

#[tokio::test]
async fn nul_and_invalid_utf8_keep_every_line_and_the_build_result() {
    let (repo, commit) = repository_with(concat!(
        "steps:\n  - name: bytes\n    image: slipway/debian:bookworm\n    commands:\n",
        "      - for i in $(seq 1 400); do echo \"line $i\"; done; printf 'nul\\000here\\n'; printf 'bad \\377\\376 bytes\\n'; echo last\n",
    ));
    let app = TestApp::spawn(&hello_config(repo.path())).await;
    let number = push(&app, "main", &commit).await;
    let build = wait_for_build(&app, number, Duration::from_secs(120)).await;
    assert_eq!(build["status"], "passed", "{build}");

    let (lines, pages) = all_lines(&app.http, &app.address, &app.token, number, 150).await;
    assert!(pages >= 3, "403 lines come in pages of 150");
    let seqs: Vec<i64> = lines.iter().map(|l| l["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=lines.len() as i64).collect::<Vec<_>>());
    let output = texts(&lines, "bytes");
    assert!(output[0].starts_with("+ for i in"), "{:?}", output[0]);
    let expected: Vec<String> = (1..=400).map(|i| format!("line {i}")).collect();
    assert_eq!(output[1..401], expected);
    assert_eq!(
        output[401..],
        ["nul\0here", "bad \u{FFFD}\u{FFFD} bytes", "last"]
    );

    // A page from the middle, and bad paging parameters named.
    let page = app
        .get_json(&format!(
            "/api/v1/projects/hello/builds/{number}/logs?after=5&limit=3"
        ))
        .await;
    let seqs: Vec<i64> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [6, 7, 8]);
    for (query, named) in [
        ("after=-1", "`after`"),
        ("limit=0", "`limit`"),
        ("limit=10001", "`limit`"),
    ] {
        let response = app
            .get(&format!(
                "/api/v1/projects/hello/builds/{number}/logs?{query}"
            ))
            .await;
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains(named), "{body}");
    }

    // Following from a line on starts after it.
    let streamed = app
        .get(&format!(
            "/api/v1/projects/hello/builds/{number}/logs?follow=true&after=401"
        ))
        .await
        .text()
        .await
        .unwrap();
    assert!(!streamed.contains("line 400"), "{streamed}");
    assert!(streamed.contains("\"seq\":402"), "{streamed}");
    assert!(streamed.contains("event: end"), "{streamed}");
    app.stop().await;
}
