//! The fuzz targets of `tailgate-fuzz`, run as proptest harnesses on stable: each target's
//! seed corpus first, then `TAILGATE_FUZZ_CASES` inputs (default [`DEFAULT_CASES`]) drawn
//! as arbitrary bytes, mutated seeds and spliced seeds. A failing input is shrunk, saved in
//! `fuzz.proptest-regressions` and replayed first on every later run.

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};
use tailgate_fuzz::{TARGETS, seeds};

/// Cases per target in the README's test command; `.ci/run` runs more.
const DEFAULT_CASES: u32 = 5_000;
/// Longest arbitrary input, in bytes.
const ARBITRARY_BYTES_MAX: usize = 2048;

fn cases() -> u32 {
    std::env::var("TAILGATE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// One edit of a seed: at `at` (modulo its length), by kind: flip bits, insert a byte,
/// delete a byte, cut the rest.
#[derive(Debug, Clone)]
struct Edit {
    at: u16,
    byte: u8,
    kind: u8,
}

fn mutate(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for e in edits {
        let at = usize::from(e.at) % (out.len() + 1);
        match e.kind % 4 {
            0 if at < out.len() => out[at] ^= e.byte.max(1),
            1 => out.insert(at, e.byte),
            2 if at < out.len() => {
                out.remove(at);
            }
            3 => out.truncate(at),
            _ => out.push(e.byte),
        }
    }
    out
}

fn inputs(seeds: Vec<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
    let n = seeds.len();
    let arbitrary = proptest::collection::vec(any::<u8>(), 0..ARBITRARY_BYTES_MAX);
    if n == 0 {
        return arbitrary.boxed();
    }
    let edits = proptest::collection::vec(
        (any::<u16>(), any::<u8>(), any::<u8>()).prop_map(|(at, byte, kind)| Edit {
            at,
            byte,
            kind,
        }),
        1..8,
    );
    let mutated = {
        let seeds = seeds.clone();
        (0..n, edits).prop_map(move |(i, edits)| mutate(&seeds[i], &edits))
    };
    let spliced = (0..n, 0..n, any::<u16>(), any::<u16>()).prop_map(move |(a, b, x, y)| {
        let (a, b) = (&seeds[a], &seeds[b]);
        let x = usize::from(x) % (a.len() + 1);
        let y = usize::from(y) % (b.len() + 1);
        [&a[..x], &b[y..]].concat()
    });
    prop_oneof![1 => arbitrary, 4 => mutated, 1 => spliced].boxed()
}

fn fuzz(name: &str) {
    let (_, target) = TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a known target");
    let seeds = seeds(name);
    assert!(!seeds.is_empty(), "{name}: the corpus has no seed");
    for seed in &seeds {
        target(seed);
    }
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        source_file: Some(file!()),
        ..Config::default()
    });
    let result = runner.run(&inputs(seeds), |input| {
        target(&input);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

#[test]
fn otlp_scan() {
    fuzz("otlp_scan");
}

#[test]
fn otlp_json() {
    fuzz("otlp_json");
}

#[test]
fn compressed_body() {
    fuzz("compressed_body");
}

#[test]
fn config() {
    fuzz("config");
}

#[test]
fn ottl() {
    fuzz("ottl");
}

#[test]
fn cluster_messages() {
    fuzz("cluster_messages");
}

#[test]
fn attribute_edits() {
    fuzz("attribute_edits");
}

#[test]
fn every_target_has_a_harness() {
    let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    let source = include_str!("fuzz.rs");
    for n in names {
        assert!(
            source.contains(&format!("fuzz(\"{n}\")")),
            "{n} has no test"
        );
    }
}
