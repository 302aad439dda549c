//! `slipway.toml` texts: parse and resolve (with an empty environment) without a panic.
#![no_main]

// Compiled in by path (see Cargo.toml); loading from disk is not exercised here.
#[allow(dead_code)]
#[path = "../../src/config/mod.rs"]
mod config;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(raw) = config::parse(text, "fuzz.toml") {
        let _ = config::resolve(raw, "fuzz.toml", &config::Overrides::default(), &|_| None);
    }
});
