//! Benchmark: one release baked in full (from `slipway/debian:bookworm`) and incrementally
//! (from the previous release's image), in the same run. Run by `scripts/bench-bake`.
//!
//! Usage: `bake_bench [extra Debian dependencies of the app...]`. The previous release (v1) is
//! baked first, untimed; then v2 is baked both ways, each into its own tag, and timed.
//! With `BAKE_BENCH_LOG=1`, every line of every bake is printed with the seconds since its start
//! (where a bake's time goes).

#[path = "../tests/packer_support/mod.rs"]
mod packer_support;

use std::time::{Duration, Instant};

use packer_support::{free_port, local_docker, Fixture, BASE_IMAGE};
use slipway_bake::{bake, BakeRequest, BakeSource};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let depends: Vec<String> = std::env::args().skip(1).collect();
    let depends: Vec<&str> = depends.iter().map(String::as_str).collect();
    let fixture = Fixture::new("bench");
    fixture.publish_depending("1.0.0", &depends);
    fixture.publish_depending("1.1.0", &depends);
    let port = free_port();

    let previous = fixture.request(1, "1.0.0", BASE_IMAGE, port);
    let (_, previous_image) = timed_bake(&previous, "previous release v1 (untimed)").await?;

    let full = with_tag(fixture.request(2, "1.1.0", BASE_IMAGE, port), "v2-full");
    let (full_time, _) = timed_bake(&full, "full bake of v2").await?;
    let incremental = with_tag(
        fixture.request(2, "1.1.0", &previous_image, port),
        "v2-incremental",
    );
    let (incremental_time, _) = timed_bake(&incremental, "incremental bake of v2").await?;

    println!("app dependencies besides python3: {depends:?}");
    println!(
        "full bake (from {BASE_IMAGE}):      {:>6.1} s",
        full_time.as_secs_f64()
    );
    println!(
        "incremental bake (from {previous_image}): {:>6.1} s",
        incremental_time.as_secs_f64()
    );
    println!(
        "ratio full/incremental: {:.2}",
        full_time.as_secs_f64() / incremental_time.as_secs_f64()
    );
    // Ansible's and Packer's costs grow with the machine's load: the figures need it beside them.
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        let averages: Vec<&str> = load.split_whitespace().take(3).collect();
        println!("load average (1, 5, 15 min): {}", averages.join(" "));
    }
    Ok(())
}

fn with_tag(mut request: BakeRequest, tag: &str) -> BakeRequest {
    if let BakeSource::Docker(docker) = &mut request.source {
        docker.tag = tag.to_string();
    }
    request.bake_id = format!("{}-{tag}", request.bake_id);
    request
}

/// Bakes `request`, printing Packer's lines only if it fails; returns the time and image name.
async fn timed_bake(
    request: &BakeRequest,
    what: &str,
) -> Result<(Duration, String), Box<dyn std::error::Error>> {
    eprintln!("bake_bench: {what}");
    let print_lines = std::env::var_os("BAKE_BENCH_LOG").is_some();
    let started = Instant::now();
    let mut log = Vec::new();
    let mut observer = |line: &str| {
        if print_lines {
            eprintln!("{:>6.2} {line}", started.elapsed().as_secs_f64());
        }
        log.push(line.to_string());
    };
    let docker = local_docker().await;
    let result = bake(request, &docker, &mut observer, &CancellationToken::new()).await;
    let elapsed = started.elapsed();
    match result {
        Ok(artifact) => Ok((elapsed, artifact.name)),
        Err(error) => {
            if !print_lines {
                eprintln!("{}", log.join("\n"));
            }
            Err(error.into())
        }
    }
}
