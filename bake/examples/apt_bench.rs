//! Benchmark: add one package to a signed apt repository already holding 1,000 packages,
//! Slipway's `AptRepository::publish` against `reprepro includedeb`. Run by `scripts/bench-apt`.
//!
//! Usage: `apt_bench <empty work dir> [packages=1000] [trials=5]`. Pre-population is not timed;
//! each trial adds one new package to both repositories and the medians are compared.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use slipway_bake::{
    deb, AptRepository, MaintainerScripts, PackageDefinition, PackageFile, PackageInfo, Signer,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let work = PathBuf::from(
        args.next()
            .ok_or("usage: apt_bench <work dir> [packages] [trials]")?,
    );
    let count: usize = args.next().map_or(Ok(1000), |a| a.parse())?;
    let trials: usize = args.next().map_or(Ok(5), |a| a.parse())?;

    let started = Instant::now();
    let packages = build_packages(&work, count + trials)?;
    let (existing, added) = packages.split_at(count);
    println!(
        "built {} tiny .debs in {:.1?}",
        packages.len(),
        started.elapsed()
    );

    let slipway = Signer::open_or_create(
        &work.join("gpg-slipway"),
        "Slipway bench <bench@slipway.example>",
    )?;
    let repository = AptRepository::open(&work.join("slipway-repo"), slipway)?;
    let started = Instant::now();
    for (path, info) in existing {
        repository.publish(path, info)?;
    }
    println!(
        "slipway: pre-populated {count} packages in {:.1?} (not timed below)",
        started.elapsed()
    );

    let reprepro_key = Signer::open_or_create(
        &work.join("gpg-reprepro"),
        "Reprepro bench <bench@slipway.example>",
    )?;
    let reprepro = Reprepro::create(
        &work.join("reprepro-repo"),
        &work.join("gpg-reprepro"),
        reprepro_key.fingerprint(),
    )?;
    let started = Instant::now();
    let existing_paths: Vec<&Path> = existing.iter().map(|(path, _)| path.as_path()).collect();
    reprepro.include(&existing_paths)?;
    println!(
        "reprepro: pre-populated {count} packages in {:.1?} (not timed below)",
        started.elapsed()
    );

    let mut slipway_times = Vec::new();
    let mut reprepro_times = Vec::new();
    for (path, info) in added {
        let started = Instant::now();
        repository.publish(path, info)?;
        slipway_times.push(started.elapsed());
        let started = Instant::now();
        reprepro.include(&[path.as_path()])?;
        reprepro_times.push(started.elapsed());
    }
    let (slipway, reprepro) = (median(&mut slipway_times), median(&mut reprepro_times));
    println!("add 1 package to a repository of {count} (median of {trials}, signed):");
    println!(
        "  slipway  {:>8.1} ms   all: {}",
        millis(slipway),
        list(&slipway_times)
    );
    println!(
        "  reprepro {:>8.1} ms   all: {}",
        millis(reprepro),
        list(&reprepro_times)
    );
    println!(
        "  ratio slipway/reprepro = {:.3}",
        slipway.as_secs_f64() / reprepro.as_secs_f64()
    );
    Ok(())
}

/// `count` tiny distinct packages, `bench0000` onwards, written under `<work>/debs`.
fn build_packages(
    work: &Path,
    count: usize,
) -> Result<Vec<(PathBuf, PackageInfo)>, Box<dyn std::error::Error>> {
    let source_root = work.join("source");
    let debs = work.join("debs");
    std::fs::create_dir_all(&source_root)?;
    std::fs::create_dir_all(&debs)?;
    std::fs::write(source_root.join("README"), "a tiny benchmark package\n")?;
    let mut packages = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("bench{i:04}");
        let definition = PackageDefinition {
            files: vec![PackageFile::new(
                "README",
                format!("/usr/share/{name}/README"),
                0o644,
            )],
            name,
            version: "1.0".into(),
            architecture: "amd64".into(),
            maintainer: "Slipway Bench <bench@slipway.example>".into(),
            description: "a tiny benchmark package".into(),
            long_description: "Generated to measure apt repository publishing.".into(),
            depends: Vec::new(),
            conffiles: Vec::new(),
            systemd_unit: None,
            maintainer_scripts: MaintainerScripts::default(),
            extra_files: Vec::new(),
            source_date_epoch: 1_700_000_000,
        };
        let package = deb::build(&definition, &source_root, &debs)?;
        packages.push((package.path, package.info));
    }
    Ok(packages)
}

/// A reprepro repository signing with its own key, as a distribution would configure it.
struct Reprepro {
    base: PathBuf,
    gnupg_home: PathBuf,
}

impl Reprepro {
    fn create(base: &Path, gnupg_home: &Path, fingerprint: &str) -> std::io::Result<Reprepro> {
        std::fs::create_dir_all(base.join("conf"))?;
        let distributions = format!(
            "Origin: Bench\nLabel: Bench\nSuite: stable\nCodename: stable\nArchitectures: amd64\nComponents: main\nSignWith: {fingerprint}\n"
        );
        std::fs::write(base.join("conf/distributions"), distributions)?;
        Ok(Reprepro {
            base: base.to_path_buf(),
            gnupg_home: gnupg_home.to_path_buf(),
        })
    }

    fn include(&self, debs: &[&Path]) -> Result<(), Box<dyn std::error::Error>> {
        let output = Command::new("reprepro")
            .env("GNUPGHOME", &self.gnupg_home)
            .arg("--silent")
            .arg("-b")
            .arg(&self.base)
            .args(["includedeb", "stable"])
            .args(debs)
            .output()?;
        if !output.status.success() {
            return Err(format!(
                "reprepro includedeb failed: {}",
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        Ok(())
    }
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn list(times: &[Duration]) -> String {
    times
        .iter()
        .map(|t| format!("{:.1}", millis(*t)))
        .collect::<Vec<_>>()
        .join(" ")
}
