use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use super::*;
use crate::config::FILE_NAME;
use crate::proto::server::{DenyEvent, EndReason};

const TEST_KDF_TOML: &str = "[kdf]\nm_kib = 1024\nt = 1\np = 1\n";

/// A data dir with the weak test KDF, so Argon2 (serials and passwords) is fast.
fn test_dir() -> TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    fs::write(d.path().join(FILE_NAME), TEST_KDF_TOML).expect("write config");
    d
}

fn open(d: &TempDir) -> Store {
    Store::open(d.path()).expect("open")
}

fn raw(d: &Path) -> Connection {
    Connection::open(d.join(DB_FILE)).expect("raw open")
}

/// The main file and its WAL: a committed row may still be only in the WAL.
fn db_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        if let Ok(b) = fs::read(dir.join(format!("{DB_FILE}{suffix}"))) {
            all.extend(b);
        }
    }
    all
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Cheap Argon2 for user tests; `add_user` itself (64 MiB) is exercised once, in
/// `passwords_are_argon2id_phc_and_never_plain`.
fn add(s: &mut Store, name: &str, password: &str, admin: bool) -> Result<(), StoreError> {
    let p = argon2::Params::new(256, 1, 1, None).expect("params");
    s.add_user_with_params(name, password, admin, p)
}

fn team() -> LicenseType {
    SiteConfig::default().get("team").expect("team").clone()
}

fn lease(lease_id: u64, license: i64, inst: u8, addr: &str) -> RestoredLease {
    RestoredLease {
        lease_id,
        license,
        instance_id: [inst; 16],
        addr: addr.parse().expect("addr"),
        since_unix: 1_700_000_000,
        who: None,
    }
}

#[test]
fn create_then_reopen_keeps_salt_kdf_epoch() {
    let d = test_dir();
    let s = open(&d);
    assert_eq!(s.kdf(), KdfParams::TEST);
    assert_eq!(s.epoch().expect("epoch"), 0);
    assert_eq!(s.dir(), d.path());
    assert_eq!(s.site().kdf, Some(KdfParams::TEST));
    let salt = s.server_salt();
    assert_ne!(salt, [0u8; 16]);
    drop(s);
    // A later [kdf] does not change what the data dir was created with.
    fs::remove_file(d.path().join(FILE_NAME)).expect("rm config");
    let s = open(&d);
    assert_eq!(s.server_salt(), salt);
    assert_eq!(s.kdf(), KdfParams::TEST);
    assert_eq!(s.epoch().expect("epoch"), 0);
    let s2 = Store::open_existing(d.path()).expect("open_existing");
    assert_eq!(s2.server_salt(), salt);
}

#[test]
fn salts_differ_between_data_dirs() {
    let (a, b) = (test_dir(), test_dir());
    assert_ne!(open(&a).server_salt(), open(&b).server_salt());
}

#[test]
fn new_data_dir_defaults_to_shipped_kdf() {
    let d = tempfile::tempdir().expect("tempdir");
    let s = Store::open(&d.path().join("a/b")).expect("open");
    assert_eq!(s.kdf(), KdfParams::SHIPPED);
}

#[cfg(unix)]
#[test]
fn data_dir_0700_and_files_0600() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().expect("tempdir");
    let dir = d.path().join("data");
    let mut s = Store::open(&dir).expect("open");
    s.bump_epoch().expect("write something");
    let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(DB_FILE)), 0o600);
    for suffix in ["-wal", "-shm"] {
        let p = dir.join(format!("{DB_FILE}{suffix}"));
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }
}

#[test]
fn wal_mode_is_set() {
    let d = test_dir();
    let _s = open(&d);
    let mode: String = raw(d.path()).query_row("PRAGMA journal_mode", [], |r| r.get(0)).expect("pragma");
    assert_eq!(mode, "wal");
}

#[test]
fn bump_epoch_persists() {
    let d = test_dir();
    let mut s = open(&d);
    assert_eq!(s.bump_epoch().expect("bump"), 1);
    assert_eq!(s.bump_epoch().expect("bump"), 2);
    drop(s);
    let mut s = open(&d);
    assert_eq!(s.epoch().expect("epoch"), 2);
    assert_eq!(s.bump_epoch().expect("bump"), 3);
}

#[test]
fn epoch_stops_at_u32_max() {
    let d = test_dir();
    let mut s = open(&d);
    raw(d.path())
        .execute("UPDATE meta SET value = ?1 WHERE key = 'epoch'", [i64::from(u32::MAX)])
        .expect("set epoch");
    assert!(matches!(s.bump_epoch(), Err(StoreError::EpochExhausted)));
    assert_eq!(s.epoch().expect("epoch"), u32::MAX);
}

#[test]
fn users_add_and_check() {
    let d = test_dir();
    let mut s = open(&d);
    assert_eq!(s.user_count().expect("count"), 0);
    add(&mut s, "alice", "correct horse", true).expect("add");
    add(&mut s, "bob.b-2_", "x", false).expect("add");
    assert_eq!(s.user_count().expect("count"), 2);
    assert!(matches!(
        s.add_user("alice", "other", false),
        Err(StoreError::UserExists { name }) if name == "alice"
    ));
    s.check_user("alice", "correct horse").expect("check");
    assert!(matches!(
        s.check_user("alice", "wrong"),
        Err(StoreError::WrongPassword { name }) if name == "alice"
    ));
    assert!(matches!(
        s.check_user("carol", "correct horse"),
        Err(StoreError::NoSuchUser { name }) if name == "carol"
    ));
    assert!(s.is_admin("alice").expect("admin"));
    assert!(!s.is_admin("bob.b-2_").expect("admin"));
    assert!(matches!(s.is_admin("carol"), Err(StoreError::NoSuchUser { .. })));
}

#[test]
fn user_names_are_checked() {
    let d = test_dir();
    let mut s = open(&d);
    let long = "a".repeat(65);
    for bad in ["", "a b", "é", "a/b", long.as_str()] {
        assert!(matches!(s.add_user(bad, "pw", false), Err(StoreError::BadUserName { .. })), "{bad:?}");
    }
    add(&mut s, &"a".repeat(64), "pw", false).expect("64 chars");
    assert!(matches!(s.add_user("dave", "", false), Err(StoreError::EmptyPassword)));
}

#[test]
fn passwords_are_argon2id_phc_and_never_plain() {
    let d = test_dir();
    let mut s = open(&d);
    let password = "Plaintext-Marker-7f3a91";
    s.add_user("alice", password, false).expect("add");
    let phc: String =
        raw(d.path()).query_row("SELECT phc FROM users WHERE name = 'alice'", [], |r| r.get(0)).expect("phc");
    assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
    assert!(phc.contains("$m=65536,t=3,p=1$"), "{phc}");
    assert!(!contains(&db_bytes(d.path()), password.as_bytes()));
    s.check_user("alice", password).expect("check");
}

#[test]
fn users_of_different_costs_coexist() {
    let d = test_dir();
    let mut s = open(&d);
    add(&mut s, "fast", "pw", false).expect("add");
    let phc: String =
        raw(d.path()).query_row("SELECT phc FROM users WHERE name = 'fast'", [], |r| r.get(0)).expect("phc");
    assert!(phc.starts_with("$argon2id$v=19$m=256,t=1,p=1$"), "{phc}");
    s.check_user("fast", "pw").expect("check");
    assert!(matches!(s.check_user("fast", "pW"), Err(StoreError::WrongPassword { .. })));
    raw(d.path()).execute("UPDATE users SET phc = 'plaintext' WHERE name = 'fast'", []).expect("damage");
    assert!(matches!(s.check_user("fast", "pw"), Err(StoreError::Corrupt { .. })));
}

#[test]
fn issue_stores_keys_not_serial() {
    let d = test_dir();
    let mut s = open(&d);
    let now = 1_700_000_000;
    let (id, serial) = s.issue("alice", &team(), None, now).expect("issue");
    let digits = serial.as_str().to_owned();
    assert_eq!(digits.len(), 10);
    assert!(digits.bytes().all(|b| b.is_ascii_digit()));
    assert!(!contains(&db_bytes(d.path()), digits.as_bytes()));

    let rows = s.licenses().expect("licenses");
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.id, id);
    assert_eq!(row.owner, "alice");
    assert_eq!(row.type_name, "team");
    assert_eq!(row.seats, 5);
    assert_eq!(row.created_unix, now);
    assert_eq!(row.expires_unix, None);
    assert_eq!(row.revoked_unix, None);
    assert_eq!(row.ttl, Duration::from_secs(60));
    assert_eq!(row.heartbeat, Duration::from_secs(15));
    let keys = derive_license_keys(&serial, &s.server_salt(), s.kdf()).expect("derive");
    assert_eq!(row.keys, keys);

    let rec = row.record();
    assert_eq!(rec.id, id);
    assert_eq!(rec.keys, keys);
    assert_eq!(rec.seats, 5);
    assert!(!rec.revoked);
    assert_eq!(rec.ttl, Duration::from_secs(60));
}

#[test]
fn issue_applies_validity_and_seat_override() {
    let d = test_dir();
    let mut s = open(&d);
    let trial = s.site().get("trial").expect("trial").clone();
    let now = 1_000;
    let (a, _) = s.issue("alice", &trial, None, now).expect("issue");
    let (b, _) = s.issue("alice", &team(), Some(42), now).expect("issue");
    assert!(b > a);
    let rows = s.licenses().expect("licenses");
    assert_eq!(rows[0].expires_unix, Some(now + 30 * 86400));
    assert_eq!(rows[1].seats, 42);
    assert!(matches!(s.issue("alice", &team(), Some(0), now), Err(StoreError::BadSeats { seats: 0 })));
    assert!(matches!(s.issue("alice", &trial, None, u64::MAX - 10), Err(StoreError::OutOfRange { .. })));
    assert_eq!(s.licenses().expect("licenses").len(), 2);
}

#[test]
fn revoke_checks_owner_and_state() {
    let d = test_dir();
    let mut s = open(&d);
    let (id, _) = s.issue("alice", &team(), None, 10).expect("issue");
    assert!(matches!(
        s.revoke(id, "mallory", 20),
        Err(StoreError::NotOwner { id: i, user }) if i == id && user == "mallory"
    ));
    assert!(matches!(
        s.revoke(id + 100, "alice", 20),
        Err(StoreError::NoSuchLicense { id: i }) if i == id + 100
    ));
    assert!(s.licenses().expect("licenses")[0].revoked_unix.is_none());
    s.revoke(id, "alice", 20).expect("revoke");
    let row = &s.licenses().expect("licenses")[0];
    assert_eq!(row.revoked_unix, Some(20));
    assert!(row.record().revoked);
    assert!(matches!(
        s.revoke(id, "alice", 30),
        Err(StoreError::AlreadyRevoked { id: i }) if i == id
    ));
}

#[test]
fn journal_round_trips_through_leases() {
    let d = test_dir();
    let mut s = open(&d);
    let a = lease(1, 7, 0xa1, "192.0.2.1:40000");
    let b = lease(u64::MAX, 7, 0xb2, "[2001:db8::1]:50000");
    let c = lease(0x8000_0000_0000_0001, 8, 0xc3, "[fe80::1%3]:1234");
    s.apply(&[
        JournalOp::Grant(a.clone()),
        JournalOp::Grant(b.clone()),
        JournalOp::Grant(c.clone()),
        JournalOp::Remove { lease_id: 1, why: EndReason::Released },
        JournalOp::Remove { lease_id: 999, why: EndReason::Expired },
    ])
    .expect("apply");
    let mut got = s.leases().expect("leases");
    got.sort_by_key(|l| l.lease_id);
    let mut want = vec![b.clone(), c.clone()];
    want.sort_by_key(|l| l.lease_id);
    assert_eq!(got, want);

    // Re-granting the same lease id replaces its row (a retransmitted commit is harmless).
    let mut b2 = b.clone();
    b2.addr = "192.0.2.9:4000".parse::<SocketAddr>().expect("addr");
    s.apply(&[JournalOp::Grant(b2.clone())]).expect("apply");
    // One instance holds one seat of a license: a newer lease replaces an unremoved older one.
    let c2 = RestoredLease { lease_id: 77, ..c.clone() };
    s.apply(&[JournalOp::Grant(c2.clone())]).expect("apply");
    drop(s);
    let s = open(&d);
    let mut got = s.leases().expect("leases");
    got.sort_by_key(|l| l.lease_id);
    assert_eq!(got, vec![c2, b2]);
}

#[test]
fn empty_journal_writes_nothing() {
    let d = test_dir();
    let mut s = open(&d);
    let watcher = open(&d);
    let v = watcher.data_version().expect("version");
    s.apply(&[]).expect("apply");
    assert_eq!(watcher.data_version().expect("version"), v);
}

#[test]
fn data_version_sees_other_connections() {
    let d = test_dir();
    let server = open(&d);
    let mut cli = open(&d);
    let v0 = server.data_version().expect("version");
    assert_eq!(server.data_version().expect("version"), v0);
    cli.issue("alice", &team(), None, 1).expect("issue");
    let v1 = server.data_version().expect("version");
    assert_ne!(v1, v0);
    assert_eq!(server.licenses().expect("licenses").len(), 1);
}

#[test]
fn open_existing_never_creates() {
    let d = tempfile::tempdir().expect("tempdir");
    let missing = d.path().join("nope");
    assert!(matches!(
        Store::open_existing(&missing),
        Err(StoreError::NoDataDir { dir }) if dir == missing
    ));
    assert!(!missing.exists());
    // A dir without a database, e.g. one holding only the site file.
    let e = Store::open_existing(d.path()).expect_err("no db");
    assert!(matches!(e, StoreError::NoDataDir { .. }));
    assert!(e.to_string().contains(&d.path().display().to_string()));
    assert!(!d.path().join(DB_FILE).exists());
    // An empty db file (a creation interrupted before its first commit) is not a store either.
    fs::write(d.path().join(DB_FILE), b"").expect("touch");
    assert!(matches!(Store::open_existing(d.path()), Err(StoreError::NoDataDir { .. })));
    fs::write(d.path().join(FILE_NAME), TEST_KDF_TOML).expect("config");
    Store::open(d.path()).expect("open completes the interrupted creation");
    Store::open_existing(d.path()).expect("now it exists");
}

fn assert_untouched(dir: &Path, before: &[u8]) {
    assert_eq!(fs::read(dir.join(DB_FILE)).expect("still there"), before);
    assert!(!dir.join(format!("{DB_FILE}-wal")).exists());
    assert!(!dir.join(format!("{DB_FILE}-shm")).exists());
}

#[test]
fn garbage_db_is_refused_and_left_alone() {
    let d = test_dir();
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    fs::write(d.path().join(DB_FILE), &garbage).expect("write");
    for r in [Store::open(d.path()), Store::open_existing(d.path())] {
        let e = r.expect_err("garbage");
        assert!(matches!(e, StoreError::NotLicUdp { .. }), "{e}");
        assert!(e.to_string().contains(DB_FILE), "{e}");
    }
    assert_untouched(d.path(), &garbage);
}

#[test]
fn truncated_sqlite_header_is_refused() {
    let d = test_dir();
    fs::write(d.path().join(DB_FILE), b"SQLite").expect("write");
    assert!(matches!(Store::open(d.path()), Err(StoreError::NotLicUdp { .. })));
    assert_untouched(d.path(), b"SQLite");
}

#[test]
fn foreign_sqlite_db_is_refused_and_left_alone() {
    let d = test_dir();
    let path = d.path().join(DB_FILE);
    {
        let c = Connection::open(&path).expect("create");
        c.execute_batch("CREATE TABLE photos (id INTEGER); INSERT INTO photos VALUES (1);").expect("fill");
    }
    let before = fs::read(&path).expect("read");
    let e = Store::open(d.path()).expect_err("foreign");
    assert!(matches!(e, StoreError::NotLicUdp { .. }), "{e}");
    assert_untouched(d.path(), &before);
}

#[test]
fn newer_schema_is_refused_and_kept() {
    let d = test_dir();
    let mut s = open(&d);
    s.issue("alice", &team(), None, 1).expect("issue");
    drop(s);
    raw(d.path()).execute("UPDATE meta SET value = 2 WHERE key = 'schema_version'", []).expect("bump schema");
    let e = Store::open(d.path()).expect_err("newer");
    assert!(matches!(e, StoreError::UnknownSchema { found: 2, supported: 1, .. }), "{e}");
    let n: i64 = raw(d.path()).query_row("SELECT count(*) FROM licenses", [], |r| r.get(0)).expect("count");
    assert_eq!(n, 1);
}

#[test]
fn damaged_rows_are_errors_not_panics() {
    let d = test_dir();
    let mut s = open(&d);
    s.issue("alice", &team(), None, 1).expect("issue");
    s.apply(&[JournalOp::Grant(lease(5, 1, 1, "192.0.2.1:4000"))]).expect("apply");
    let c = raw(d.path());
    c.execute("UPDATE leases SET addr = 'not an address'", []).expect("damage addr");
    assert!(matches!(s.leases(), Err(StoreError::Corrupt { .. })));
    c.execute("UPDATE leases SET addr = '192.0.2.1:4000', since = -5", []).expect("damage since");
    assert!(matches!(s.leases(), Err(StoreError::Corrupt { .. })));

    // The CHECKs stop honest writers; a damaged or hand-edited file can still get past them.
    c.execute_batch("PRAGMA ignore_check_constraints = ON; UPDATE licenses SET k_proof = x'00';")
        .expect("damage key");
    let e = s.licenses().expect_err("short key");
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("k_proof has 1 bytes, expected 32"), "{e}");
    c.execute_batch("UPDATE licenses SET k_proof = zeroblob(32), seats = 70000;").expect("damage seats");
    assert!(matches!(s.licenses(), Err(StoreError::Corrupt { .. })));
    c.execute_batch("UPDATE licenses SET seats = 3, ttl_ms = 'long';")
        .expect_err("STRICT refuses text in an integer column");

    c.execute("UPDATE meta SET value = x'0102' WHERE key = 'server_salt'", []).expect("damage salt");
    drop(s);
    let e = Store::open(d.path()).expect_err("short salt");
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
}

#[test]
fn broken_site_file_stops_creation() {
    let d = tempfile::tempdir().expect("tempdir");
    fs::write(d.path().join(FILE_NAME), "[kdf]\nm_kib = 1\nt = 1\np = 1\n").expect("write");
    let e = Store::open(d.path()).expect_err("bad kdf");
    assert!(matches!(e, StoreError::Config(_)), "{e}");
    assert!(e.to_string().contains(FILE_NAME), "{e}");
    assert!(!d.path().join(DB_FILE).exists());
}

#[test]
fn concurrent_first_opens_agree() {
    let d = test_dir();
    let dir: PathBuf = d.path().join("shared");
    fs::create_dir(&dir).expect("mkdir");
    fs::write(dir.join(FILE_NAME), TEST_KDF_TOML).expect("config");
    let salts: Vec<[u8; 16]> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4).map(|_| sc.spawn(|| Store::open(&dir).map(|s| s.server_salt()))).collect();
        hs.into_iter().map(|h| h.join().expect("thread").expect("open")).collect()
    });
    assert!(salts.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn server_and_cli_write_concurrently() {
    let d = test_dir();
    let mut server = open(&d);
    let mut cli = open(&d);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            for i in 1..=100u64 {
                server.apply(&[JournalOp::Grant(lease(i, 1, i as u8, "192.0.2.1:4000"))]).expect("apply");
            }
        });
        sc.spawn(|| {
            for _ in 0..20 {
                cli.issue("alice", &team(), None, 1).expect("issue");
            }
        });
    });
    let s = open(&d);
    assert_eq!(s.leases().expect("leases").len(), 100);
    assert_eq!(s.licenses().expect("licenses").len(), 20);
}

#[test]
fn audit_log_records_every_seat_event_with_its_cause() {
    use crate::proto::wire::DenyReason;
    let d = test_dir();
    let mut s = open(&d);
    add(&mut s, "alice", "pw", true).expect("user");
    let (id, _) = s.issue("alice", &team(), Some(3), 1_700_000_000).expect("issue");
    let a = lease(10, id, 0xa1, "192.0.2.1:40000");
    let b = lease(11, id, 0xb2, "192.0.2.2:40000");
    let c = lease(12, id, 0xc3, "192.0.2.3:40000");
    s.apply(&[JournalOp::Grant(a.clone()), JournalOp::Grant(b.clone()), JournalOp::Grant(c.clone())])
        .expect("grants");
    s.apply(&[
        JournalOp::Remove { lease_id: 10, why: EndReason::Released },
        JournalOp::Remove { lease_id: 11, why: EndReason::Expired },
        JournalOp::Remove { lease_id: 12, why: EndReason::ForceReleased("bob".into()) },
        // Never journaled: nothing to say about it.
        JournalOp::Remove { lease_id: 999, why: EndReason::Expired },
    ])
    .expect("removals");
    let deny = DenyEvent {
        license: id,
        instance_id: [0xd4; 16],
        addr: "192.0.2.4:40000".parse().expect("addr"),
        // Removals are stamped with the store's clock; the rest with the times given here.
        unix: unix_now() + 100,
        reason: DenyReason::Full,
    };
    s.record_denials(&[deny]).expect("denials");
    s.revoke(id, "alice", unix_now() + 200).expect("revoke");

    let all = s.audit(&AuditQuery::default()).expect("audit");
    let events: Vec<&str> = all.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        events,
        ["issue", "grant", "grant", "grant", "release", "expire", "force-release", "deny", "revoke"]
    );
    let fr = &all[6];
    assert_eq!(fr.actor.as_deref(), Some("bob"));
    assert_eq!(fr.lease.as_deref(), Some("000000000000000c"));
    assert_eq!(fr.addr.as_deref(), Some("192.0.2.3:40000"));
    assert_eq!(fr.instance.as_deref(), Some(hex::encode([0xc3u8; 16]).as_str()));
    assert_eq!(all[7].detail.as_deref(), Some("full"));
    assert_eq!(all[8].actor.as_deref(), Some("alice"));

    // Filters: by license, by time, by sequence, newest-N.
    assert!(s.audit(&AuditQuery { license: Some(id + 1), ..Default::default() }).expect("q").is_empty());
    let late = s.audit(&AuditQuery { since_unix: Some(unix_now() + 100), ..Default::default() }).expect("q");
    assert_eq!(late.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(), ["deny", "revoke"]);
    let last2 = s.audit(&AuditQuery { limit: Some(2), ..Default::default() }).expect("q");
    assert_eq!(last2, all[7..].to_vec());
    let after = s.audit(&AuditQuery { after_seq: Some(all[7].seq), ..Default::default() }).expect("q");
    assert_eq!(after, all[8..].to_vec());
    // A page after a seq is the events right after it, not the newest (which skipped some).
    let page = s.audit(&AuditQuery { after_seq: Some(all[1].seq), limit: Some(2), ..Default::default() });
    assert_eq!(page.expect("q"), all[2..4].to_vec());
    // An owner's view is filtered before the limit: bob owns nothing, alice everything.
    let bobs = s.audit(&AuditQuery { owner: Some("bob".into()), limit: Some(2), ..Default::default() });
    assert!(bobs.expect("q").is_empty());
    let alices = s.audit(&AuditQuery { owner: Some("alice".into()), limit: Some(2), ..Default::default() });
    assert_eq!(alices.expect("q"), all[7..].to_vec());
}

#[test]
fn audit_retention_bounds_age_and_count() {
    let d = test_dir();
    let mut s = open(&d);
    let day = 86_400;
    let now = 1_800_000_000u64;
    // 3,000 events, one a minute, ending now.
    let ops: Vec<_> = (0..3000u64)
        .map(|i| {
            let mut l = lease(i + 1, 1, (i % 250) as u8, "192.0.2.1:40000");
            l.since_unix = now - (3000 - i) * 60;
            l.instance_id[1] = (i / 250) as u8;
            JournalOp::Grant(l)
        })
        .collect();
    s.apply(&ops).expect("grants");
    // Keep one day: 1,440 minutes.
    let r = crate::config::AuditRetention { keep: Duration::from_secs(day), max_events: 1_000_000 };
    let mut gone = 0;
    loop {
        let n = s.prune_audit(r, now, 500).expect("prune");
        gone += n;
        if n < 500 {
            break;
        }
    }
    let left = s.audit(&AuditQuery::default()).expect("audit");
    assert_eq!(gone as usize + left.len(), 3000);
    assert!(left.iter().all(|e| e.ts >= now - day), "an event older than a day survived");
    assert_eq!(left.len(), 1440);
    // Then the count bound: the newest 1,000 stay.
    let r = crate::config::AuditRetention { keep: Duration::from_secs(day), max_events: 1000 };
    while s.prune_audit(r, now, 500).expect("prune") == 500 {}
    let left2 = s.audit(&AuditQuery::default()).expect("audit");
    assert_eq!(left2.len(), 1000);
    assert_eq!(left2.last(), left.last());
}

#[test]
fn api_tokens_are_stored_hashed_and_name_their_account() {
    let d = test_dir();
    let mut s = open(&d);
    add(&mut s, "alice", "pw", false).expect("user");
    assert!(matches!(s.add_token("nobody"), Err(StoreError::NoSuchUser { .. })));
    let t = s.add_token("alice").expect("token");
    assert!(t.starts_with(TOKEN_PREFIX) && t.len() == TOKEN_PREFIX.len() + 64, "{t}");
    assert_eq!(s.token_user(&t).expect("lookup").as_deref(), Some("alice"));
    assert_eq!(s.token_user(&format!("{t}0")).expect("lookup"), None);
    assert_eq!(s.token_user("not-a-token").expect("lookup"), None);
    drop(s);
    assert!(!contains(&db_bytes(d.path()), t.as_bytes()), "the token itself reached the disk");
    let mut s = open(&d);
    assert_eq!(s.revoke_tokens("alice").expect("revoke"), 1);
    assert_eq!(s.token_user(&t).expect("lookup"), None);
}

#[test]
fn web_sign_in_failures_do_not_lock_the_cli_out() {
    let d = test_dir();
    let mut s = open(&d);
    add(&mut s, "alice", "pw", true).expect("user");
    for _ in 0..login::FREE_FAILURES {
        assert!(matches!(s.check_web_user("alice", "wrong"), Err(StoreError::WrongPassword { .. })));
    }
    // The web counter is spent: even the right password must wait there...
    match s.check_web_user("alice", "pw") {
        Err(StoreError::LoginThrottled { name, retry_after_s }) => {
            assert_eq!(name, "alice", "the message names the account, not the counter");
            assert!(retry_after_s >= 1);
        }
        other => panic!("expected the web sign-in to be throttled, got {other:?}"),
    }
    // ...while the CLI's own counter is untouched.
    s.check_user("alice", "pw").expect("the CLI login still works");
    for _ in 0..login::FREE_FAILURES {
        assert!(s.check_user("alice", "wrong").is_err());
    }
    assert!(matches!(s.check_user("alice", "pw"), Err(StoreError::LoginThrottled { .. })));
}

#[test]
fn a_hand_made_data_dir_is_made_private() {
    use std::os::unix::fs::PermissionsExt;
    let d = test_dir();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    drop(open(&d));
    let mode = fs::metadata(d.path()).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

/// The backoff after the fifth wrong password is a real second, not "until the clock's next
/// whole second": five failures late in one second and an attempt early in the next are
/// 0.2 s apart, and the attempt must still wait.
#[test]
fn login_backoff_is_timed_in_milliseconds_not_clock_seconds() {
    use std::time::{Instant, SystemTime, UNIX_EPOCH};
    let d = test_dir();
    let mut s = open(&d);
    add(&mut s, "alice", "right", true).expect("add");
    let ms = || SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_millis());
    let give_up = Instant::now() + Duration::from_secs(5);
    while !(800..=830).contains(&ms()) && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(2));
    }
    for _ in 0..5 {
        assert!(matches!(s.check_user("alice", "wrong"), Err(StoreError::WrongPassword { .. })));
    }
    // Into the next clock second, but well within the 1 s wait.
    while ms() >= 800 && Instant::now() < give_up + Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(2));
    }
    match s.check_user("alice", "right") {
        Err(StoreError::LoginThrottled { retry_after_s, .. }) => assert_eq!(retry_after_s, 1),
        other => panic!("a sixth attempt within the wait was checked: {other:?}"),
    }
}

/// Issue 11 item 10: pruning with nothing due takes no write lock, so it neither waits for
/// the server's commits nor makes them wait (its old single DELETE scanned the whole table
/// under the write lock). Here another connection holds the write lock throughout.
#[test]
fn pruning_with_nothing_due_takes_no_write_lock() {
    let d = test_dir();
    let mut s = open(&d);
    let now = 1_800_000_000u64;
    let ops: Vec<_> = (0..100u64)
        .map(|i| {
            let mut l = lease(i + 1, 1, i as u8, "192.0.2.1:40000");
            l.since_unix = now - 60;
            JournalOp::Grant(l)
        })
        .collect();
    s.apply(&ops).expect("grants");
    let writer = rusqlite::Connection::open(s.db_path()).expect("second connection");
    writer.execute_batch("BEGIN IMMEDIATE").expect("hold the write lock");
    let r = crate::config::AuditRetention { keep: Duration::from_secs(86_400), max_events: 1_000 };
    assert_eq!(s.prune_audit(r, now, 500).expect("nothing due: no write needed"), 0);
    writer.execute_batch("ROLLBACK").expect("rollback");
    // With the lock free, what is due goes, a batch at a time.
    let r = crate::config::AuditRetention { keep: Duration::from_secs(86_400), max_events: 30 };
    assert_eq!(s.prune_audit(r, now, 50).expect("prune"), 50);
    assert_eq!(s.prune_audit(r, now, 50).expect("prune"), 20);
    assert_eq!(s.prune_audit(r, now, 50).expect("prune"), 0);
    assert_eq!(s.audit(&AuditQuery::default()).expect("audit").len(), 30);
}
