//! `ClientCore` fed raw, server-made and forged datagrams and timeouts; checks that its timers
//! never spin and that it only ever sends valid datagrams.
//! The logic is in tests/fuzzing/mod.rs, shared with `cargo test --test fuzz_corpus`.
#![no_main]

#[path = "../../tests/fuzzing/mod.rs"]
mod fuzzing;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::client_sequence(data));
