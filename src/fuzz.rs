//! A small fuzzing harness on stable Rust: proptest generates inputs (arbitrary bytes and
//! mutations of valid seeds), and each target runs as an ordinary test.
//!
//! `cargo test` runs every target for `FUZZ_CASES` inputs (default 256). CI's `.ci/fuzz` sets
//! `FUZZ_SECS` too: a target then keeps going until that many seconds have passed (or
//! `FUZZ_CASES` inputs ran, whichever comes first) and prints `fuzz NAME: N executions in S s`.
//! A panic prints the input that caused it (hex) before failing the test; such an input becomes
//! a regression test next to the target.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// Runs `check` on inputs from `strategy` within the bounds above.
pub fn run<S: Strategy>(name: &str, strategy: S, mut check: impl FnMut(&S::Value))
where
    S::Value: std::fmt::Debug,
{
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let secs = env("FUZZ_SECS");
    let cases = env("FUZZ_CASES").unwrap_or(if secs.is_some() { u64::MAX } else { 256 });
    let limit = secs.map(Duration::from_secs);
    // A fresh seed per run under CI (new inputs every time); a fixed one for plain tests.
    let rng = match secs {
        Some(_) => TestRng::from_seed(RngAlgorithm::ChaCha, &rand::random::<[u8; 32]>()),
        None => TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    };
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let start = Instant::now();
    let mut n = 0u64;
    while n < cases && limit.is_none_or(|l| start.elapsed() < l) {
        let Ok(tree) = strategy.new_tree(&mut runner) else {
            continue;
        };
        let input = tree.current();
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| check(&input))) {
            eprintln!("fuzz {name}: panicked on input {input:?}");
            resume_unwind(p);
        }
        n += 1;
    }
    if secs.is_some() {
        eprintln!(
            "fuzz {name}: {n} executions in {:.1} s",
            start.elapsed().as_secs_f64()
        );
    }
}

/// Arbitrary bytes up to `max` long, or one of `seeds` with a few bytes flipped, inserted,
/// deleted or cut off (so inputs get past the first length check).
pub fn bytes(seeds: Vec<Vec<u8>>, max: usize) -> BoxedStrategy<Vec<u8>> {
    let random = proptest::collection::vec(any::<u8>(), 0..max);
    if seeds.is_empty() {
        return random.boxed();
    }
    let edits = proptest::collection::vec((any::<u16>(), 0u8..4, any::<u8>()), 1..8);
    let mutated = (0..seeds.len(), edits).prop_map(move |(i, edits)| {
        let mut b = seeds[i].clone();
        for (at, op, v) in edits {
            let at = at as usize % (b.len() + 1);
            match op {
                0 if at < b.len() => b[at] ^= v.max(1),
                1 => b.insert(at, v),
                2 if at < b.len() => {
                    b.remove(at);
                }
                3 => b.truncate(at),
                _ => {}
            }
        }
        b
    });
    prop_oneof![1 => random, 3 => mutated].boxed()
}

/// Text: arbitrary strings, or seed lines shuffled and mutated (for line-based formats).
pub fn text(seeds: Vec<String>) -> BoxedStrategy<String> {
    let raw = bytes(seeds.into_iter().map(String::into_bytes).collect(), 2000);
    prop_oneof![
        1 => ".{0,300}",
        3 => raw.prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
    .boxed()
}
