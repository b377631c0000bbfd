//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/*`) and any local crash artifacts
//! (`fuzz/artifacts/<target>/*`, git-ignored) through the same harness functions the cargo-fuzz
//! targets call (`tests/fuzzing/mod.rs`), under plain `cargo test` on stable. See fuzz/README.md.

mod fuzzing;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

type Harness = fn(&[u8]);

const TARGETS: [(&str, Harness); 3] = [
    ("decode", fuzzing::decode_roundtrip),
    ("server", fuzzing::server_sequence),
    ("client", fuzzing::client_sequence),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Regular files of `dir`, sorted; none if it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> =
        entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()).collect();
    v.sort();
    v
}

/// Runs `f` on every file; returns the files that panicked, with the message.
fn replay(paths: &[PathBuf], f: Harness) -> Vec<String> {
    let mut failures = Vec::new();
    for p in paths {
        let data = std::fs::read(p).expect("read a corpus file");
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| f(&data))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            failures.push(format!("{}: {msg}\n    input: {}", p.display(), hex::encode(&data)));
        }
    }
    failures
}

fn replay_target(name: &str) {
    let (_, f) = TARGETS.iter().find(|(n, _)| *n == name).expect("a known target");
    let corpus = files(&fuzz_dir().join("corpus").join(name));
    assert!(corpus.len() >= 20, "fuzz/corpus/{name} has only {} files", corpus.len());
    let artifacts = files(&fuzz_dir().join("artifacts").join(name));
    let mut failures = replay(&corpus, *f);
    failures.extend(replay(&artifacts, *f));
    assert!(
        failures.is_empty(),
        "{} of {} inputs of target {name} failed:\n{}",
        failures.len(),
        corpus.len() + artifacts.len(),
        failures.join("\n")
    );
}

#[test]
fn decode_corpus() {
    replay_target("decode");
}

#[test]
fn server_corpus() {
    replay_target("server");
}

#[test]
fn client_corpus() {
    replay_target("client");
}

/// The generated seeds are committed unchanged (regenerate with `write_seed_corpus`).
#[test]
fn seed_corpus_is_committed() {
    for (target, name, bytes) in fuzzing::seed_corpus() {
        let path = fuzz_dir().join("corpus").join(target).join(&name);
        let on_disk = std::fs::read(&path).unwrap_or_default();
        assert!(
            on_disk == bytes,
            "{} is missing or stale: run `WRITE_SEED_CORPUS=1 cargo test --test fuzz_corpus -- \
             --ignored write_seed_corpus`",
            path.display()
        );
    }
}

/// Every seed reaches what it was written for: checks that the harness really drives the cores
/// into deep states, so a change of the input format cannot silently make the seeds shallow.
#[test]
fn seeds_reach_deep_states() {
    use std::collections::HashMap;
    let seeds: HashMap<String, Vec<u8>> =
        fuzzing::seed_corpus().into_iter().map(|(t, n, b)| (format!("{t}/{n}"), b)).collect();
    let get = |k: &str| seeds.get(k).unwrap_or_else(|| panic!("seed {k}")).clone();
    // The same functions, with a probe: the server handshake seed must yield a GRANT and ACKs.
    let (grants, acks) = fuzzing::server_sequence_probe(&get("server/seed-handshake-heartbeats"), true);
    assert_eq!(grants, 1, "the handshake seed did not reach GRANT");
    assert!(acks >= 3, "the heartbeat seed got {acks} ACKs");
    let (grants, _) = fuzzing::server_sequence_probe(&get("server/seed-three-clients-two-seats"), true);
    assert_eq!(grants, 2, "two seats, two grants");
    let events = fuzzing::client_sequence_probe(&get("client/seed-heartbeats"));
    assert!(events.iter().any(|e| e.starts_with("Granted")), "{events:?}");
    let events = fuzzing::client_sequence_probe(&get("client/seed-lost-then-regained"));
    assert!(events.iter().any(|e| e == "Lost") && events.iter().any(|e| e == "Regained"), "{events:?}");
    let events = fuzzing::client_sequence_probe(&get("client/seed-forged-grant"));
    assert!(events.iter().any(|e| e.starts_with("Granted")), "{events:?}");
}

/// Regression test for KNOWN BUG 1, found by the `server` fuzz target and now fixed: a failed
/// journal commit dropped the batch's lease removals; after the seats were given out again, a
/// restart restored more leases than the license had seats, so three copies ran on two seats.
/// `commit_failed` now requeues removals and `restore` enforces the seat limit.
#[test]
fn known_bug_1_lost_remove_overbooks_after_restart() {
    let dir = fuzz_dir().join("corpus/server");
    let repros: Vec<PathBuf> =
        ["seed-known-bug-1-lost-remove-restart", "seed-known-bug-1-two-leases-one-instance"]
            .iter()
            .map(|n| dir.join(n))
            .collect();
    let failures = replay(&repros, fuzzing::server_sequence_strict);
    assert!(failures.is_empty(), "KNOWN BUG 1 reproduces:\n{}", failures.join("\n"));
}

/// Writes the generated seeds into `fuzz/corpus/<target>/` (only with `WRITE_SEED_CORPUS=1`).
#[test]
#[ignore = "writes files; run by hand after changing the seeds"]
fn write_seed_corpus() {
    if std::env::var_os("WRITE_SEED_CORPUS").is_none() {
        return;
    }
    for (target, name, bytes) in fuzzing::seed_corpus() {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).expect("create the corpus dir");
        std::fs::write(dir.join(name), bytes).expect("write a seed");
    }
}
