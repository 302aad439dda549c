//! Bitbucket Cloud `repo:push` bodies: no panic, and every accepted push is safe to act on.
#![no_main]

// Compiled in by path (see Cargo.toml); the signature check is not exercised here.
#[allow(dead_code)]
#[path = "../../src/webhook.rs"]
mod webhook;
mod webhook_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    webhook_checks::parse_and_check("repo:push", data);
});
