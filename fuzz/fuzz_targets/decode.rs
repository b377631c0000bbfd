//! `wire::decode` on arbitrary bytes: never panics, and what it accepts re-encodes to itself.
//! The logic is in tests/fuzzing/mod.rs, shared with `cargo test --test fuzz_corpus`.
#![no_main]

#[path = "../../tests/fuzzing/mod.rs"]
mod fuzzing;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::decode_roundtrip(data));
