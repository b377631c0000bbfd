//! `ServerCore` fed records of (source, clock step, datagram), raw or from real client cores,
//! with commits, failures, revocations and restarts; checks seats, replies and amplification.
//! The logic is in tests/fuzzing/mod.rs, shared with `cargo test --test fuzz_corpus`.
#![no_main]

#[path = "../../tests/fuzzing/mod.rs"]
mod fuzzing;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::server_sequence(data));
