//! The server's signing key: created once, reused, and verifiable with the exported public key.

mod common;

use common::run;
use slipway_bake::Signer;

const UID: &str = "Slipway apt <apt@slipway.example>";

#[test]
fn reopening_the_key_directory_keeps_the_same_key() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("gpg");
    let first = Signer::open_or_create(&dir, UID).unwrap();
    let second = Signer::open_or_create(&dir, UID).unwrap();
    assert_eq!(first.fingerprint(), second.fingerprint());
    assert_eq!(first.fingerprint().len(), 40);
    assert_eq!(
        first.public_key_binary().unwrap(),
        second.public_key_binary().unwrap()
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&dir).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700);
    let armored = first.public_key_armored().unwrap();
    assert!(
        armored.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----"),
        "{armored}"
    );
    assert!(!armored.contains("PRIVATE"));
}

#[test]
fn signatures_verify_against_the_exported_key_and_fail_when_altered() {
    let data = tempfile::tempdir().unwrap();
    let signer = Signer::open_or_create(&data.path().join("gpg"), UID).unwrap();
    let keyring = data.path().join("key.gpg");
    std::fs::write(&keyring, signer.public_key_binary().unwrap()).unwrap();
    let keyring = keyring.to_str().unwrap();
    let release = b"Origin: Slipway\nSuite: stable\n";

    let in_release = data.path().join("InRelease");
    let clearsigned = signer.clearsign(release).unwrap();
    assert!(String::from_utf8_lossy(&clearsigned).starts_with("-----BEGIN PGP SIGNED MESSAGE-----"));
    std::fs::write(&in_release, &clearsigned).unwrap();
    let (ok, text) = run(
        "gpgv",
        &["--keyring", keyring, in_release.to_str().unwrap()],
    );
    assert!(ok, "{text}");

    let (release_path, signature) = (data.path().join("Release"), data.path().join("Release.gpg"));
    std::fs::write(&release_path, release).unwrap();
    std::fs::write(&signature, signer.detach_sign(release).unwrap()).unwrap();
    let verify = || {
        run(
            "gpgv",
            &[
                "--keyring",
                keyring,
                signature.to_str().unwrap(),
                release_path.to_str().unwrap(),
            ],
        )
    };
    assert!(verify().0, "{}", verify().1);
    std::fs::write(&release_path, b"Origin: Mallory\nSuite: stable\n").unwrap();
    let (ok, text) = verify();
    assert!(!ok && text.contains("BAD signature"), "{text}");
}
