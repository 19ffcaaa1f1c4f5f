//! The config parser on mutated and random input (proptest, fixed seed): it never panics, says
//! what was wrong, and answers quickly. (An operator writes this file; the bounds that matter
//! for image content are fuzzed in gpu-core/tests/fuzz.rs.)

use std::time::{Duration, Instant};

use nvidia_shim_config::ShimConfig;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

#[test]
fn config_parser_never_panics_and_names_what_is_wrong() {
    let example = include_str!("../../../deploy/nvidia-shim.toml")
        .as_bytes()
        .to_vec();
    let len = example.len();
    let mutated = (
        prop::collection::vec((0..len, any::<u8>()), 0..16),
        prop::option::of(0..len),
    )
        .prop_map(move |(flips, cut)| {
            let mut b = example.clone();
            for (i, v) in flips {
                b[i] = v;
            }
            if let Some(c) = cut {
                b.truncate(c);
            }
            b
        });
    let input = prop_oneof![
        mutated,
        prop::collection::vec(any::<u8>(), 0..256),
        "\\[(runc|driver|gpu|log)\\]\n[a-z_]{1,24} = (true|1|\"[a-z/]{0,12}\"|\\[\\]|[0-9]{1,25})\n"
            .prop_map(String::into_bytes),
    ];
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    runner
        .run(&input, |bytes| {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let t = Instant::now();
            if let Err(e) = ShimConfig::parse(&text, "fuzz") {
                prop_assert!(e.to_string().starts_with("config fuzz: "), "{e}");
            }
            prop_assert!(t.elapsed() < Duration::from_millis(500));
            Ok(())
        })
        .unwrap();
}
