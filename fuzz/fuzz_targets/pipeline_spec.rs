//! `.slipway.yml` texts: parse, compile and serialise the plan without a panic, within the
//! alias, depth and size bounds (libFuzzer's RSS limit catches an unbounded expansion).
#![no_main]

use std::collections::BTreeMap;

use slipway_pipeline::spec::Event;
use slipway_pipeline::{compile, parse, BuildInfo};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = parse(text) else {
        return;
    };
    let build = BuildInfo {
        project: "acme/hello".to_owned(),
        number: 1,
        build_id: "fuzz".to_owned(),
        commit: "0123456789abcdef0123456789abcdef01234567".to_owned(),
        branch: "main".to_owned(),
        event: Event::Push,
        extra_labels: BTreeMap::new(),
        extra_env: Default::default(),
    };
    if let Ok(plan) = compile(&spec, &build) {
        serde_json::to_vec(&plan).expect("a plan always serialises");
    }
});
