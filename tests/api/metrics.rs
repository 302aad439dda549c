//! `/metrics` against the real server and PostgreSQL: what a scrape shows for builds, steps,
//! bakes, deployments and locks seeded into the database, that every line is valid exposition
//! format, and who may read it (a token of any scope; none when configured so). No dockerd.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::{json, Value};
use tokio_postgres::NoTls;

use crate::helpers::TestApp;

/// A project the server runs no build of itself (nothing claims the seeded queued build).
const CONFIG: &str = "max_concurrent_builds = 0\n[[projects]]\nname = \"hello\"\nrepository = \"acme/hello\"\nclone_url = \"file:///nonexistent\"\n";

/// A histogram bucket: its upper bound and count.
type Bucket = (f64, f64);

/// One sample line: its name, labels and value.
#[derive(Debug)]
struct Line {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape, parsed and checked: every line is a comment or `name{labels} value`, and every
/// sample's family has `# HELP` and `# TYPE` before it; histograms are cumulative, ending with
/// `+Inf` equal to `_count`.
struct Scrape {
    lines: Vec<Line>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut help = HashMap::new();
        let mut types: HashMap<String, String> = HashMap::new();
        let mut lines = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, text) = rest.split_once(' ').expect("HELP has a name and a text");
                assert!(valid_name(name), "{line}");
                assert!(
                    help.insert(name.to_owned(), text.to_owned()).is_none(),
                    "{line}"
                );
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE has a name and a type");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line}"
                );
                assert!(help.contains_key(name), "TYPE before HELP: {line}");
                assert!(
                    types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "{line}"
                );
                continue;
            }
            assert!(
                !line.starts_with('#') && !line.trim().is_empty(),
                "{line:?}"
            );
            let sample = parse_sample(line);
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|suffix| sample.name.strip_suffix(suffix))
                .find(|base| types.get(*base).is_some_and(|t| t == "histogram"))
                .unwrap_or(&sample.name)
                .to_owned();
            assert!(
                types.contains_key(&family) && help.contains_key(&family),
                "no HELP/TYPE before {line}"
            );
            assert!(family.starts_with("slipway_"), "{line}");
            lines.push(sample);
        }
        let scrape = Scrape { lines };
        scrape.check_histograms(&types);
        scrape
    }

    fn check_histograms(&self, types: &HashMap<String, String>) {
        for (family, _) in types.iter().filter(|(_, t)| *t == "histogram") {
            let bucket = format!("{family}_bucket");
            let mut series: BTreeMap<Vec<(String, String)>, Vec<Bucket>> = BTreeMap::new();
            for line in self.lines.iter().filter(|l| l.name == bucket) {
                let le = &line.labels["le"];
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                let key = line
                    .labels
                    .iter()
                    .filter(|(k, _)| *k != "le")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                series.entry(key).or_default().push((le, line.value));
            }
            for (labels, buckets) in series {
                assert!(
                    buckets
                        .windows(2)
                        .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                    "{family} {labels:?}: not cumulative: {buckets:?}"
                );
                let (last_le, inf) = *buckets.last().unwrap();
                assert_eq!(last_le, f64::INFINITY, "{family} {labels:?}");
                let labels: Vec<(&str, &str)> = labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                assert_eq!(self.get(&format!("{family}_count"), &labels), Some(inf));
                assert!(self.get(&format!("{family}_sum"), &labels).is_some());
            }
        }
    }

    /// The value of the sample with exactly these labels.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.lines
            .iter()
            .find(|l| l.name == name && l.labels == wanted)
            .map(|l| l.value)
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in {:#?}", self.lines))
    }

    /// A histogram's bucket counts at these bounds, its sum and count.
    fn histogram(&self, name: &str, labels: &[(&str, &str)], les: &[&str]) -> (Vec<f64>, f64, f64) {
        let buckets = les
            .iter()
            .map(|le| {
                let mut with_le = labels.to_vec();
                with_le.push(("le", le));
                self.value(&format!("{name}_bucket"), &with_le)
            })
            .collect();
        (
            buckets,
            self.value(&format!("{name}_sum"), labels),
            self.value(&format!("{name}_count"), labels),
        )
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name{label="value",...} value`, with the format's escapes in label values.
fn parse_sample(line: &str) -> Line {
    let end = line.find(['{', ' ']).unwrap_or_else(|| panic!("{line}"));
    let name = &line[..end];
    assert!(valid_name(name), "{line}");
    let mut rest = &line[end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        loop {
            let (start, _) = *chars.peek().unwrap_or_else(|| panic!("{line}"));
            if inner[start..].starts_with('}') {
                chars.next();
                break;
            }
            let eq = inner[start..].find('=').unwrap_or_else(|| panic!("{line}"));
            let label = &inner[start..start + eq];
            assert!(valid_name(label) && !label.contains(':'), "{line}");
            for _ in 0..=eq {
                chars.next();
            }
            assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
            let mut value = String::new();
            loop {
                match chars
                    .next()
                    .unwrap_or_else(|| panic!("unterminated: {line}"))
                    .1
                {
                    '\\' => match chars.next().unwrap().1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        other => panic!("bad escape \\{other}: {line}"),
                    },
                    '"' => break,
                    '\n' => panic!("raw line feed: {line}"),
                    c => value.push(c),
                }
            }
            assert!(labels.insert(label.to_owned(), value).is_none(), "{line}");
            match chars.next().map(|(_, c)| c) {
                Some(',') => {}
                Some('}') => break,
                other => panic!("{other:?} after a label: {line}"),
            }
        }
        let consumed = chars.peek().map_or(inner.len(), |(i, _)| *i);
        rest = &inner[consumed..];
    }
    let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("{line}"));
    assert!(!value.contains(' '), "a timestamp or junk: {line}");
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        number => number.parse().unwrap_or_else(|_| panic!("{line}")),
    };
    Line {
        name: name.to_owned(),
        labels,
        value,
    }
}

async fn scrape(app: &TestApp, token: Option<&str>) -> reqwest::Response {
    let mut request = app.http.get(format!("{}/metrics", app.address));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("request sent")
}

async fn scrape_ok(app: &TestApp) -> Scrape {
    let response = scrape(app, Some(&app.token)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    Scrape::parse(&response.text().await.unwrap())
}

async fn database(app: &TestApp) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&app.database_url, NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// A fixed time, so seeded durations are exact.
const T0: &str = "timestamptz '2024-05-01 12:00:00+00'";

/// Seeds project `hello`: builds (3 passed, 1 failed, 1 queued, 1 running), their steps, a
/// release with a baked Docker image and a failed AMI bake, deployments with their health
/// waits, and environment locks; returns the id of the live server holding `prod`'s lock.
async fn seed(client: &tokio_postgres::Client) -> uuid::Uuid {
    // Another live server of the installation: it runs the running build and holds a lock.
    let other = uuid::Uuid::new_v4();
    client
        .execute(
            "INSERT INTO servers (id, host, pid, process_space, version, listen)
             VALUES ($1, 'elsewhere', 1, 'another boot', '0', '10.0.0.2:8080')",
            &[&other],
        )
        .await
        .unwrap();
    // number, status, waited (queued to started), ran (started to finished), in seconds.
    let finished = [
        (1, "passed", 0.5, 2.0),
        (2, "passed", 7.0, 20.0),
        (3, "passed", 7.0, 100.0),
        (4, "failed", 200.0, 400.0),
    ];
    let mut passed = Vec::new();
    for (number, status, waited, ran) in finished {
        let id = uuid::Uuid::new_v4();
        client
            .execute(
                &format!(
                    "INSERT INTO builds (id, project, number, branch, commit, event, status,
                         queued_at, started_at, finished_at)
                     VALUES ($1, 'hello', $2, 'main', 'abc123', 'push', $3, {T0},
                         {T0} + $4::float8 * interval '1 second',
                         {T0} + ($4::float8 + $5::float8) * interval '1 second')"
                ),
                &[&id, &(number as i64), &status, &waited, &ran],
            )
            .await
            .unwrap();
        if status == "passed" {
            passed.push(id);
        }
    }
    client
        .execute(
            "INSERT INTO builds (id, project, number, branch, commit, event, status, queued_at)
             VALUES ($1, 'hello', 5, 'main', 'abc123', 'push', 'queued', now() - interval '30 seconds')",
            &[&uuid::Uuid::new_v4()],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO builds (id, project, number, branch, commit, event, status, queued_at,
                 started_at, owner)
             VALUES ($1, 'hello', 6, 'main', 'abc123', 'push', 'running',
                 now() - interval '4 seconds', now() - interval '2 seconds', $2)",
            &[&uuid::Uuid::new_v4(), &other],
        )
        .await
        .unwrap();
    // Each passed build: `test` ran 3 s; a step whose name needs escaping ran 10 s in the
    // first; `deploy` was skipped (never started).
    for (i, build) in passed.iter().enumerate() {
        let mut steps = vec![(0, "test", Some(3.0)), (2, "deploy", None)];
        if i == 0 {
            steps.push((1, "say \"hi\" \\ there", Some(10.0)));
        }
        for (position, name, ran) in steps {
            let status = if ran.is_some() { "passed" } else { "skipped" };
            client
                .execute(
                    &format!(
                        "INSERT INTO build_steps (build_id, position, name, status, started_at, finished_at)
                         VALUES ($1, $2, $3, $4, CASE WHEN $5::float8 IS NOT NULL THEN {T0} END,
                             {T0} + coalesce($5::float8, 0) * interval '1 second')"
                    ),
                    &[build, &position, &name, &status, &ran],
                )
                .await
                .unwrap();
        }
    }
    // Release v1 from build 1: its Docker image baked in 200 s; its AMI's bake failed, its
    // log's last line 50 s after it started.
    let release = uuid::Uuid::new_v4();
    client
        .execute(
            "INSERT INTO releases (id, project, number, build_id, commit, status)
             VALUES ($1, 'hello', 1, $2, 'abc123', 'published')",
            &[&release, &passed[0]],
        )
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "INSERT INTO release_images (release_id, kind, region, status, started_at, baked_at)
             VALUES ('{release}', 'docker', '', 'baked', {T0}, {T0} + interval '200 seconds'),
                    ('{release}', 'ami', 'eu-west-1', 'failed', {T0}, NULL);
             INSERT INTO bake_log_lines (release_id, kind, region, seq, at, line)
             VALUES ('{release}', 'ami', 'eu-west-1', 1, {T0} + interval '10 seconds', 'starting'),
                    ('{release}', 'ami', 'eu-west-1', 2, {T0} + interval '50 seconds', 'failed');"
        ))
        .await
        .unwrap();
    // Deployments to prod: two succeeded (healthy after 12 s and 45 s), one failed (its
    // health wait failed after 300 s), one still keeping the old fleet warm, and a switch back.
    let deployments = [
        ("d1", "deploy", "succeeded", Some((12_000_i64, None))),
        ("d2", "deploy", "succeeded", Some((45_000, None))),
        ("d3", "deploy", "failed", Some((300_000, Some("unhealthy")))),
        ("d4", "deploy", "retaining_blue", None),
        ("d5", "switch_back", "succeeded", Some((1_000, None))),
    ];
    for (id, kind, state, healthy) in deployments {
        let finished = state != "retaining_blue";
        client
            .execute(
                &format!(
                    "INSERT INTO deployments (id, project, environment, release, kind, state,
                         record, started_at, updated_at, finished_at)
                     VALUES ($1, 'hello', 'prod', 'v1', $2, $3, '{{}}', {T0}, {T0},
                         CASE WHEN $4 THEN {T0} + interval '10 minutes' END)"
                ),
                &[&id, &kind, &state, &finished],
            )
            .await
            .unwrap();
        if let Some((elapsed_ms, error)) = healthy {
            client
                .execute(
                    &format!(
                        "INSERT INTO deployment_steps (deployment_id, step, started_at, finished_at, elapsed_ms, error)
                         VALUES ($1, 'launching', {T0}, {T0}, 5000, NULL),
                                ($1, 'waiting_healthy', {T0},
                                    {T0} + $2::bigint * interval '1 millisecond', $2::bigint, $3)"
                    ),
                    &[&id, &elapsed_ms, &error],
                )
                .await
                .unwrap();
        }
    }
    // prod's lock: held for 90 s by the live server; dev's: expired an hour ago.
    client
        .execute(
            "INSERT INTO environment_locks (project, environment, owner, acquired_at, heartbeat_at, ttl_ms)
             VALUES ('hello', 'prod', $1, now() - interval '90 seconds', now(), 600000),
                    ('hello', 'dev', $1, now() - interval '2 hours', now() - interval '1 hour', 60000)",
            &[&other.to_string()],
        )
        .await
        .unwrap();
    other
}

#[tokio::test]
async fn a_scrape_reports_the_builds_bakes_deployments_and_locks_in_the_database() {
    let app = TestApp::spawn(CONFIG).await;
    let client = database(&app).await;
    let holder = seed(&client).await;
    let hello = [("project", "hello")];
    let scrape = scrape_ok(&app).await;

    let builds = |status| {
        scrape.value(
            "slipway_builds",
            &[("project", "hello"), ("status", status)],
        )
    };
    assert_eq!(builds("passed"), 3.0);
    assert_eq!(builds("failed"), 1.0);
    assert_eq!(builds("queued"), 1.0);
    assert_eq!(builds("running"), 1.0);
    assert_eq!(builds("errored"), 0.0);
    assert_eq!(builds("cancelled"), 0.0);

    assert_eq!(scrape.value("slipway_build_queue_length", &hello), 1.0);
    let oldest = scrape.value("slipway_build_queue_oldest_seconds", &hello);
    assert!((30.0..60.0).contains(&oldest), "{oldest}");

    // Waits of 0.5, 7, 7, 200 s and the running build's 2 s.
    let (buckets, sum, count) = scrape.histogram(
        "slipway_build_queue_wait_seconds",
        &hello,
        &["1", "5", "15", "120", "300", "+Inf"],
    );
    assert_eq!(buckets, [1.0, 2.0, 4.0, 4.0, 5.0, 5.0]);
    assert!((sum - 216.5).abs() < 0.01, "{sum}");
    assert_eq!(count, 5.0);

    let passed = [("project", "hello"), ("status", "passed")];
    let (buckets, sum, count) = scrape.histogram(
        "slipway_build_duration_seconds",
        &passed,
        &["1", "5", "30", "120", "+Inf"],
    );
    assert_eq!(buckets, [0.0, 1.0, 2.0, 3.0, 3.0]);
    assert_eq!((sum, count), (122.0, 3.0));
    let failed = [("project", "hello"), ("status", "failed")];
    let (buckets, sum, _) =
        scrape.histogram("slipway_build_duration_seconds", &failed, &["300", "600"]);
    assert_eq!((buckets, sum), (vec![0.0, 1.0], 400.0));
    assert!(
        scrape
            .get(
                "slipway_build_duration_seconds_count",
                &[("project", "hello"), ("status", "running")]
            )
            .is_none(),
        "a running build has no duration yet"
    );

    let test = [("project", "hello"), ("step", "test")];
    let (buckets, sum, count) =
        scrape.histogram("slipway_step_duration_seconds", &test, &["1", "5"]);
    assert_eq!((buckets, sum, count), (vec![0.0, 3.0], 9.0, 3.0));
    let odd = [("project", "hello"), ("step", "say \"hi\" \\ there")];
    assert_eq!(
        scrape.value("slipway_step_duration_seconds_sum", &odd),
        10.0
    );
    assert!(
        scrape
            .get(
                "slipway_step_duration_seconds_count",
                &[("project", "hello"), ("step", "deploy")]
            )
            .is_none(),
        "a skipped step never ran"
    );

    let docker = [
        ("project", "hello"),
        ("kind", "docker"),
        ("status", "baked"),
    ];
    let (buckets, sum, count) =
        scrape.histogram("slipway_bake_duration_seconds", &docker, &["120", "300"]);
    assert_eq!((buckets, sum, count), (vec![0.0, 1.0], 200.0, 1.0));
    let ami = [("project", "hello"), ("kind", "ami"), ("status", "failed")];
    let (buckets, sum, count) =
        scrape.histogram("slipway_bake_duration_seconds", &ami, &["30", "60"]);
    assert_eq!((buckets, sum, count), (vec![0.0, 1.0], 50.0, 1.0));

    let deployments = |kind, outcome| {
        scrape.get(
            "slipway_deployments_total",
            &[
                ("project", "hello"),
                ("environment", "prod"),
                ("kind", kind),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(deployments("deploy", "succeeded"), Some(2.0));
    assert_eq!(deployments("deploy", "failed"), Some(1.0));
    assert_eq!(deployments("switch_back", "succeeded"), Some(1.0));
    assert_eq!(deployments("deploy", "retaining_blue"), None);
    assert_eq!(
        scrape.value(
            "slipway_deployments_in_progress",
            &[
                ("project", "hello"),
                ("environment", "prod"),
                ("state", "retaining_blue")
            ]
        ),
        1.0
    );

    // 12 s and 45 s; the failed wait and the switch back's check are not times to healthy.
    let prod = [("project", "hello"), ("environment", "prod")];
    let (buckets, sum, count) = scrape.histogram(
        "slipway_deployment_time_to_healthy_seconds",
        &prod,
        &["5", "15", "60", "+Inf"],
    );
    assert_eq!((buckets, sum, count), (vec![0.0, 1.0, 2.0, 2.0], 57.0, 2.0));

    let held = scrape.value(
        "slipway_environment_lock_held_seconds",
        &[
            ("project", "hello"),
            ("environment", "prod"),
            ("owner", &holder.to_string()),
        ],
    );
    assert!((90.0..120.0).contains(&held), "{held}");
    assert!(
        !scrape
            .lines
            .iter()
            .any(|l| l.name == "slipway_environment_lock_held_seconds"
                && l.labels["environment"] == "dev"),
        "an expired lock holds nothing up"
    );
    for lock in [
        "apt_bucket",
        "release_numbering",
        "schema_migrations",
        "signing_key",
    ] {
        assert_eq!(
            scrape.value("slipway_advisory_lock_waiters", &[("lock", lock)]),
            0.0
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_session_waiting_for_an_advisory_lock_is_reported_until_it_gets_it() {
    let app = TestApp::spawn(CONFIG).await;
    let holder = database(&app).await;
    let waiter = database(&app).await;
    // The apt bucket's turn (store/apt.rs), held by one session and waited for by another.
    holder
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(4242003)")
        .await
        .unwrap();
    let waiting = tokio::spawn(async move {
        waiter
            .batch_execute("SELECT pg_advisory_lock(4242003); SELECT pg_advisory_unlock(4242003)")
            .await
            .unwrap();
    });
    let apt = [("lock", "apt_bucket")];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = scrape_ok(&app).await;
        if scrape.value("slipway_advisory_lock_waiters", &apt) == 1.0 {
            let longest = scrape.value("slipway_advisory_lock_wait_longest_seconds", &apt);
            assert!((0.0..10.0).contains(&longest), "{longest}");
            assert_eq!(
                scrape.value("slipway_advisory_lock_waiters", &[("lock", "signing_key")]),
                0.0
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the waiter never showed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    holder.batch_execute("COMMIT").await.unwrap();
    waiting.await.unwrap();
    let scrape = scrape_ok(&app).await;
    assert_eq!(scrape.value("slipway_advisory_lock_waiters", &apt), 0.0);
    app.stop().await;
}

/// A new token with `scopes`, made with the admin token; its id and secret.
async fn make_token(app: &TestApp, name: &str, scopes: &[&str]) -> (i64, String) {
    let created = app.create_token(name, scopes).await;
    let token = created["token"].as_str().expect("a token").to_owned();
    (created["id"].as_i64().unwrap(), token)
}

/// 401 with the API's `{"error"}` body, which never repeats the token.
async fn assert_refused(app: &TestApp, token: Option<&str>, says: &str) {
    let response = scrape(app, token).await;
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    let error = body["error"].as_str().unwrap_or_else(|| panic!("{body}"));
    assert!(error.contains(says), "{body}");
    if let Some(token) = token {
        assert!(!error.contains(token), "{body}");
    }
}

#[tokio::test]
async fn metrics_need_a_token_of_any_scope() {
    let app = TestApp::spawn(CONFIG).await;
    assert_refused(&app, None, "missing bearer token").await;
    assert_refused(&app, Some("not-a-token"), "unknown token").await;
    let (_, read) = make_token(&app, "prometheus", &["read"]).await;
    let (_, agent) = make_token(&app, "agents", &["agent"]).await;
    let (revoked_id, revoked) = make_token(&app, "old", &["read"]).await;
    for token in [&read, &agent, &app.token] {
        let response = scrape(&app, Some(token)).await;
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        Scrape::parse(&text);
        assert!(
            text.contains("slipway_builds{project=\"hello\",status=\"queued\"} 0"),
            "{text}"
        );
        assert!(!text.contains(token.as_str()));
    }
    let response = app
        .http
        .delete(format!("{}/api/v1/tokens/{revoked_id}", app.address))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    assert_refused(&app, Some(&revoked), "was revoked").await;
    app.stop().await;
}

#[tokio::test]
async fn metrics_answer_without_a_token_when_configured_anonymous() {
    let app = TestApp::spawn(&format!("{CONFIG}[metrics]\nanonymous = true\n")).await;
    let response = scrape(&app, None).await;
    assert_eq!(response.status(), 200);
    let scrape = Scrape::parse(&response.text().await.unwrap());
    assert_eq!(
        scrape.value("slipway_build_queue_length", &[("project", "hello")]),
        0.0
    );
    // A token presented is still checked.
    assert_refused(&app, Some("not-a-token"), "unknown token").await;
    app.stop().await;
}

#[test]
fn an_unknown_metrics_key_is_refused() {
    let error = slipway::config::parse("[metrics]\nanonymus = true\n", "slipway.toml")
        .expect_err("a misspelt key is refused");
    assert!(error.to_string().contains("anonymus"), "{error}");
    let raw = slipway::config::parse("[metrics]\nanonymous = true\n", "slipway.toml").unwrap();
    assert_eq!(raw.metrics.and_then(|m| m.anonymous), Some(true));
}

#[tokio::test]
async fn a_promotion_refused_for_a_held_lock_is_counted_by_the_server_that_refused_it() {
    // prod's lock is held by another live server from before this one starts, so its
    // recovery leaves prod alone; and dockerd is unreachable, so nothing is started.
    let database_url = crate::helpers::test_database();
    let schema = slipway::store::Store::connect(&database_url).await.unwrap();
    schema.close();
    let (client, connection) = tokio_postgres::connect(&database_url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let holder = uuid::Uuid::new_v4();
    client
        .batch_execute(&format!(
            "INSERT INTO servers (id, host, pid, process_space, version, listen)
             VALUES ('{holder}', 'elsewhere', 1, 'another boot', '0', '10.0.0.2:8080');
             INSERT INTO environment_locks (project, environment, owner, acquired_at, heartbeat_at, ttl_ms)
             VALUES ('hello', 'prod', '{holder}', now() - interval '1 minute', now(), 600000);"
        ))
        .await
        .unwrap();
    let port = crate::helpers::free_port();
    let config = format!(
        "docker_host = \"unix:///nonexistent/docker.sock\"\n{CONFIG}[[projects.environments]]\nname = \"prod\"\ntarget = \"docker\"\nlisten = \"127.0.0.1:{port}\"\ninstances = 1\n"
    );
    let app = TestApp::spawn_with_database(&config, database_url).await;
    crate::deploy::insert_release(&app.database_url, "hello", 1, "slipway/hello:v1", true).await;
    let prod = [("project", "hello"), ("environment", "prod")];
    let before = scrape_ok(&app).await;
    assert_eq!(
        before.value("slipway_environment_lock_refusals_total", &prod),
        0.0
    );

    let response = app
        .http
        .post(format!(
            "{}/api/v1/projects/hello/environments/prod/promote",
            app.address
        ))
        .bearer_auth(&app.token)
        .json(&json!({ "release": "v1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let body = response.text().await.unwrap();
    assert!(body.contains(&format!("locked by {holder}")), "{body}");
    let after = scrape_ok(&app).await;
    assert_eq!(
        after.value("slipway_environment_lock_refusals_total", &prod),
        1.0
    );
    let held = after.value(
        "slipway_environment_lock_held_seconds",
        &[
            ("project", "hello"),
            ("environment", "prod"),
            ("owner", &holder.to_string()),
        ],
    );
    assert!((60.0..120.0).contains(&held), "{held}");
    app.stop().await;
}
