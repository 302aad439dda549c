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

#[test]
fn a_key_exported_from_one_home_signs_the_same_from_another() {
    let data = tempfile::tempdir().unwrap();
    let first = Signer::open_or_create(&data.path().join("first"), UID).unwrap();
    let secret = first.export_secret_key().unwrap();
    assert!(
        secret.starts_with("-----BEGIN PGP PRIVATE KEY BLOCK-----"),
        "an armored secret key"
    );
    // A home that made a key of its own still signs with the installation's.
    let other_home = data.path().join("second");
    let own = Signer::open_or_create(&other_home, UID).unwrap();
    assert_ne!(own.fingerprint(), first.fingerprint());
    let second = Signer::with_key(&other_home, first.fingerprint(), &secret).unwrap();
    assert_eq!(second.fingerprint(), first.fingerprint());
    assert_eq!(
        second.public_key_binary().unwrap(),
        first.public_key_binary().unwrap()
    );
    let keyring = data.path().join("key.gpg");
    std::fs::write(&keyring, first.public_key_binary().unwrap()).unwrap();
    let signed = data.path().join("InRelease");
    std::fs::write(&signed, second.clearsign(b"Suite: stable\n").unwrap()).unwrap();
    let (ok, text) = run(
        "gpgv",
        &[
            "--keyring",
            keyring.to_str().unwrap(),
            signed.to_str().unwrap(),
        ],
    );
    assert!(ok, "{text}");
    // Opening again finds the imported key without importing it a second time.
    let again = Signer::with_key(&other_home, first.fingerprint(), "not a key").unwrap();
    assert_eq!(again.fingerprint(), first.fingerprint());
    // A key that is not the one named is refused.
    let third = data.path().join("third");
    let refused = Signer::with_key(&third, own.fingerprint(), &secret);
    assert!(
        refused.is_err(),
        "the secret key is not {}",
        own.fingerprint()
    );
}
