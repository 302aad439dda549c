//! The server's own OpenPGP key, kept in a GnuPG home the caller chooses, driving `gpg`.
//!
//! The key is created on first use (ed25519, no passphrase: the server signs unattended) and
//! reused afterwards, so clients that trust `/apt/key.gpg` keep trusting new publishes.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, IoContext, Result};

/// Makes the GnuPG home `dir` (mode 0700) and locks it against other processes until the
/// returned file is dropped.
fn lock_home(dir: &Path) -> Result<File> {
    fs::create_dir_all(dir).io_context("creating signing key directory", dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .io_context("restricting signing key directory", dir)?;
    let lock_path = dir.join("slipway.lock");
    let lock = File::create(&lock_path).io_context("creating signing lock", &lock_path)?;
    lock.lock()
        .io_context("locking signing key directory", &lock_path)?;
    Ok(lock)
}

/// Signs apt indexes with one secret key living in `home` (a GNUPGHOME, mode 0700).
#[derive(Debug, Clone)]
pub struct Signer {
    home: PathBuf,
    fingerprint: String,
}

impl Signer {
    /// Opens the key in `dir`, creating the directory and an ed25519 signing key for `uid`
    /// (e.g. `Slipway apt <apt@example.com>`) when none exists yet. Safe across processes.
    #[tracing::instrument(skip_all, fields(dir = %dir.display()), err)]
    pub fn open_or_create(dir: &Path, uid: &str) -> Result<Signer> {
        let _lock = lock_home(dir)?;
        let mut signer = Signer {
            home: dir.to_path_buf(),
            fingerprint: String::new(),
        };
        signer.fingerprint = match signer.secret_key_fingerprint()? {
            Some(fingerprint) => fingerprint,
            None => {
                signer.gpg(
                    "generating key",
                    &[
                        "--passphrase",
                        "",
                        "--quick-generate-key",
                        uid,
                        "ed25519",
                        "sign",
                        "never",
                    ],
                    &[],
                )?;
                let fingerprint = signer.secret_key_fingerprint()?.ok_or(Error::Gpg {
                    action: "generating key",
                    stderr: "no secret key after generation".into(),
                })?;
                tracing::info!(%fingerprint, "created apt signing key");
                fingerprint
            }
        };
        Ok(signer)
    }

    /// The key `fingerprint` in `dir`, imported first from `secret_key` (an armored secret
    /// key, as [`Signer::export_secret_key`] gives) when the directory lacks it: how every
    /// server of an installation signs with the one key kept where they all find it. Fails
    /// when the imported key is not the one named.
    #[tracing::instrument(skip_all, fields(dir = %dir.display(), %fingerprint), err)]
    pub fn with_key(dir: &Path, fingerprint: &str, secret_key: &str) -> Result<Signer> {
        let _lock = lock_home(dir)?;
        let signer = Signer {
            home: dir.to_path_buf(),
            fingerprint: fingerprint.to_owned(),
        };
        if !signer.has_secret_key()? {
            signer.gpg("importing key", &["--import"], secret_key.as_bytes())?;
            if !signer.has_secret_key()? {
                return Err(Error::Gpg {
                    action: "importing key",
                    stderr: format!("the imported key is not {fingerprint}"),
                });
            }
            tracing::info!("imported the installation's signing key");
        }
        Ok(signer)
    }

    /// The secret key, ASCII-armored: for keeping where the installation's other servers find
    /// it (never for serving).
    pub fn export_secret_key(&self) -> Result<String> {
        let bytes = self.gpg(
            "exporting secret key",
            &[
                "--passphrase",
                "",
                "--armor",
                "--export-secret-keys",
                &self.fingerprint,
            ],
            &[],
        )?;
        String::from_utf8(bytes).map_err(|_| Error::Gpg {
            action: "exporting secret key",
            stderr: "gpg's armored output is not text".into(),
        })
    }

    /// Whether the home holds the secret key of this signer's fingerprint.
    fn has_secret_key(&self) -> Result<bool> {
        let listing = self.gpg(
            "listing keys",
            &["--with-colons", "--list-secret-keys"],
            &[],
        )?;
        Ok(String::from_utf8_lossy(&listing)
            .lines()
            .filter(|line| line.starts_with("fpr:"))
            .any(|line| line.split(':').nth(9) == Some(self.fingerprint.as_str())))
    }

    /// The key's fingerprint, upper-case hex.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The public key as an ASCII-armored block (for `.asc` keyring files).
    pub fn public_key_armored(&self) -> Result<String> {
        let bytes = self.gpg(
            "exporting public key",
            &["--armor", "--export", &self.fingerprint],
            &[],
        )?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The public key as a binary keyring: what apt expects in a `signed-by=....gpg` file.
    pub fn public_key_binary(&self) -> Result<Vec<u8>> {
        self.gpg(
            "exporting public key",
            &["--export", &self.fingerprint],
            &[],
        )
    }

    /// An inline-signed copy of `data`: `InRelease` from `Release`.
    pub fn clearsign(&self, data: &[u8]) -> Result<Vec<u8>> {
        self.gpg(
            "clearsigning",
            &[
                "--digest-algo",
                "SHA512",
                "--local-user",
                &self.fingerprint,
                "--clearsign",
            ],
            data,
        )
    }

    /// An armored detached signature of `data`: `Release.gpg` from `Release`.
    pub fn detach_sign(&self, data: &[u8]) -> Result<Vec<u8>> {
        let args = [
            "--digest-algo",
            "SHA512",
            "--local-user",
            &self.fingerprint,
            "--armor",
            "--detach-sign",
        ];
        self.gpg("detach-signing", &args, data)
    }

    fn secret_key_fingerprint(&self) -> Result<Option<String>> {
        let listing = self.gpg(
            "listing keys",
            &["--with-colons", "--list-secret-keys"],
            &[],
        )?;
        let listing = String::from_utf8_lossy(&listing);
        // The first `fpr` record after `sec` is the primary key's fingerprint.
        let fingerprint = listing
            .lines()
            .skip_while(|line| !line.starts_with("sec:"))
            .find(|line| line.starts_with("fpr:"))
            .and_then(|line| line.split(':').nth(9))
            .map(str::to_string);
        Ok(fingerprint)
    }

    /// Runs gpg in batch mode with `input` on stdin, returning stdout.
    fn gpg(&self, action: &'static str, args: &[&str], input: &[u8]) -> Result<Vec<u8>> {
        let mut child = Command::new("gpg")
            .env("GNUPGHOME", &self.home)
            .args([
                "--batch",
                "--yes",
                "--no-tty",
                "--quiet",
                "--pinentry-mode",
                "loopback",
            ])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .io_context("running gpg", "gpg")?;
        let mut stdin = child.stdin.take().expect("stdin was piped");
        // Write from a thread so a large input cannot deadlock against gpg's full stdout pipe.
        let input = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let output = child.wait_with_output().io_context("running gpg", "gpg")?;
        let written = writer.join().expect("gpg stdin writer panicked");
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
            return Err(Error::Gpg { action, stderr });
        }
        written.io_context("writing to gpg", "gpg")?;
        Ok(output.stdout)
    }
}
