//! The embedded store: one SQLite file, `<data dir>/lic-udp.db`, shared by the server and the
//! CLI.
//!
//! WAL lets `status` and `issue` work while the server writes, and `synchronous=FULL` makes
//! every commit an fsync, which is what "a grant is durable before its GRANT leaves"
//! (proto-spec.md §7) needs. The busy timeout rides out the other process's short write
//! transactions instead of failing on them.
//!
//! Nothing here deletes, resets or "repairs" a file it does not recognise: a data dir holds the
//! keys of every license, and losing it means reissuing all of them.

mod accounts;
mod audit;
mod backend;
pub mod etcd;
pub mod fault;
mod lock;
mod login;
mod recovery;
mod schema;
mod tokens;
mod who;

pub use accounts::{Account, TokenInfo};
pub use audit::{deny_reason_name, AuditEntry, AuditQuery};
pub use backend::{AdminStore, RecordedHolder};
pub use lock::{is_served, ServeLock, LOCK_FILE};
pub use tokens::TOKEN_PREFIX;

use std::fs;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use argon2::password_hash::{self, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Version};
use rand::rngs::OsRng;
use rand::{Rng, RngCore};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use zeroize::Zeroizing;

use crate::config::{ConfigError, LicenseType, SiteConfig};
use crate::proto::keys::{derive_license_keys, KdfError, KdfParams, LicenseKeys, Serial};
use crate::proto::server::{JournalOp, LicenseRecord, RestoredLease};

use crate::unix_now;

use schema::{
    APP_ID, META_EPOCH, META_KDF_M, META_KDF_P, META_KDF_T, META_SALT, META_SCHEMA_VERSION, SCHEMA_VERSION,
};

/// The database's name inside the data dir.
pub const DB_FILE: &str = "lic-udp.db";

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Serials are 10 decimal digits (proto-spec.md §3).
pub(crate) const SERIAL_SPACE: u64 = 10_000_000_000;
/// Two licenses sharing a 64-bit `license_id` by chance is astronomically rare; failing again
/// and again means something other than chance is at work, so give up instead of looping.
pub(crate) const ISSUE_ATTEMPTS: usize = 8;
const SQLITE_MAGIC: &[u8] = b"SQLite format 3\0";

/// Why the store refused. Grouped by cause; every message says what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    // --- The data dir and its files.
    #[error("no lic-udp data in {}: the directory or its {DB_FILE} does not exist yet; check --data-dir, or create it with `lic-udp user add`", dir.display())]
    NoDataDir { dir: PathBuf },
    #[error("{} is a file, not a directory: the data dir must be a directory; move the file away, or give another --data-dir", dir.display())]
    NotADirectory { dir: PathBuf },
    #[error("cannot create or read {}: {source}; check the path and this user's permissions on it", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a lic-udp database ({why}); lic-udp leaves it untouched: move it away or use another data dir", path.display())]
    NotLicUdp { path: PathBuf, why: &'static str },
    #[error("{} has schema version {found}, but this lic-udp reads only version {supported}; run the lic-udp release that wrote it", path.display())]
    UnknownSchema { path: PathBuf, found: i64, supported: i64 },
    #[error("{} is damaged: {what}; restore it from a backup", path.display())]
    Corrupt { path: PathBuf, what: String },
    #[error(transparent)]
    Config(#[from] ConfigError),

    // --- The database engine.
    #[error("{} stayed locked by another lic-udp process for more than 5 s; retry, or stop whatever holds it", path.display())]
    Busy {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot write {}: {source}; free disk space, or fix the permissions of the file and its directory", path.display())]
    Unwritable {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database error in {}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the store was left in an unknown state by a thread that panicked; restart lic-udp")]
    Poisoned,

    // --- Users.
    #[error("`{name}` is not a valid user name: use 1 to 64 characters of A-Z a-z 0-9 . _ -")]
    BadUserName { name: String },
    #[error("`{name}` is reserved: the audit log names the server's local token so; pick another name")]
    ReservedUserName { name: String },
    #[error("an empty password is not allowed; choose one")]
    EmptyPassword,
    #[error("user `{name}` already exists; pick another name")]
    UserExists { name: String },
    #[error("there is no user `{name}`; add one first")]
    NoSuchUser { name: String },
    #[error("wrong password for user `{name}`")]
    WrongPassword { name: String },
    #[error("too many wrong passwords for user `{name}`; try again in {retry_after_s} s")]
    LoginThrottled { name: String, retry_after_s: i64 },
    #[error("cannot hash the password: {message}")]
    PasswordHash { message: String },

    // --- Licenses and the lease journal.
    #[error(
        "there is no license {id} (or it is another account's); `lic-udp status` lists the ones you can see"
    )]
    NoSuchLicense { id: i64 },
    #[error(
        "license {id} does not belong to user `{user}`; only its owner or an admin account can revoke it"
    )]
    NotOwner { id: i64, user: String },
    #[error("license {id} is already revoked")]
    AlreadyRevoked { id: i64 },
    #[error("a license needs 1 to 65535 seats, not {seats}")]
    BadSeats { seats: u16 },
    #[error("the {what} is too large to store; check the system clock and the license type")]
    OutOfRange { what: &'static str },
    #[error("cannot derive license keys: {0}")]
    Kdf(#[from] KdfError),
    #[error(
        "no unused license id found after {ISSUE_ATTEMPTS} attempts; retry, and report this if it persists"
    )]
    NoFreeLicenseId,
    #[error("another `lic-udp serve`{} is serving {}: two servers on one data dir would hand out the same seats twice. Stop it first, or give this one its own --data-dir", pid.map(|p| format!(" (pid {p})")).unwrap_or_default(), dir.display())]
    InUse { dir: PathBuf, pid: Option<u32> },
    #[error("the boot epoch has reached its maximum (u32::MAX); clients cannot tell further restarts apart, so this data dir cannot serve again")]
    EpochExhausted,

    // --- The etcd store (several servers, one seat count).
    #[error("`{url}` is not a store address ({why}); write etcd://HOST:PORT[,HOST:PORT…][/PREFIX]")]
    BadStoreUrl { url: String, why: String },
    #[error(transparent)]
    Etcd(#[from] etcd::EtcdError),
    #[error("no lic-udp data under {url} yet; check the prefix, or create it with `lic-udp user add --store {url}`")]
    NoEtcdData { url: String },
    #[error("{url} holds keys that are not lic-udp's (another deployment or program); lic-udp leaves them untouched: choose another prefix, e.g. etcd://HOST:PORT/lic-udp-site2")]
    ForeignPrefix { url: String },
    #[error("{url} has lic-udp data of layout version {found}, but this lic-udp reads only version {supported}; run the lic-udp release that wrote it")]
    UnknownEtcdSchema { url: String, found: u32, supported: u32 },
    #[error("lic-udp data under {url} is damaged: {what}; restore it from an etcd snapshot")]
    EtcdCorrupt { url: String, what: String },
    #[error("etcd {found} is too old: lic-udp needs etcd {need} or later")]
    EtcdTooOld { found: String, need: String },
    #[error("node id `{node}` is in use by a live node{}; give this node another --node-id, or stop that one (a dead node's place frees itself within {wait_s} s)", if host.is_empty() { String::new() } else { format!(" (pid {pid} on {host})") })]
    NodeIdInUse { node: String, host: String, pid: u32, wait_s: u64 },
    #[error("{what} kept changing under this write in etcd; retry")]
    Contended { what: &'static str },
    #[error("removing `{name}` takes {ops} etcd operations, more than one transaction takes (128); withdraw its tokens first (`lic-udp token revoke`), or reassign its licenses in smaller steps")]
    TooBigForEtcd { name: String, ops: usize },
    #[error("`{name}` is the last admin account; make another admin first (`lic-udp user add --admin`)")]
    LastAdmin { name: String },
    #[error("`{name}` owns {count} license(s); give them to another account with --reassign NAME")]
    OwnsLicenses { name: String, count: usize },
    #[error("a seat of one server is freed through that server, not its data dir: use `lic-udp release` with the server running")]
    NotShared,
}

/// Attaches the database path to an engine error and sorts it by what the user can do.
fn classify(path: &Path, e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    let path = path.to_owned();
    match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            C::DatabaseBusy | C::DatabaseLocked => StoreError::Busy { path, source: e },
            C::DiskFull | C::ReadOnly | C::CannotOpen | C::PermissionDenied | C::SystemIoFailure => {
                StoreError::Unwritable { path, source: e }
            }
            C::NotADatabase => StoreError::NotLicUdp { path, why: "SQLite does not recognise it" },
            C::DatabaseCorrupt => StoreError::Corrupt { path, what: e.to_string() },
            _ => StoreError::Sqlite { path, source: e },
        },
        // A value of the wrong type can only come from a file edited by hand or damaged.
        rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => StoreError::Corrupt { path, what: e.to_string() },
        _ => StoreError::Sqlite { path, source: e },
    }
}

trait At<T> {
    fn at(self, db: &Path) -> Result<T, StoreError>;
}

impl<T> At<T> for rusqlite::Result<T> {
    fn at(self, db: &Path) -> Result<T, StoreError> {
        self.map_err(|e| classify(db, e))
    }
}

fn corrupt(db: &Path, what: impl Into<String>) -> StoreError {
    StoreError::Corrupt { path: db.to_owned(), what: what.into() }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

/// SQLite integers are i64; every time and duration we keep is a u64 that must fit.
fn to_sql(v: u64, what: &'static str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::OutOfRange { what })
}

fn ms_to_sql(d: Duration, what: &'static str) -> Result<i64, StoreError> {
    i64::try_from(d.as_millis()).map_err(|_| StoreError::OutOfRange { what })
}

fn from_sql(v: i64, db: &Path, what: impl FnOnce() -> String) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| corrupt(db, format!("{} is negative ({v})", what())))
}

fn blob<const N: usize>(v: &[u8], db: &Path, what: impl FnOnce() -> String) -> Result<[u8; N], StoreError> {
    <[u8; N]>::try_from(v).map_err(|_| corrupt(db, format!("{} has {} bytes, expected {N}", what(), v.len())))
}

/// Lease ids use all 64 bits on the wire; SQLite keeps them as i64 with the same bits.
fn lease_id_to_sql(id: u64) -> i64 {
    i64::from_le_bytes(id.to_le_bytes())
}

fn lease_id_from_sql(v: i64) -> u64 {
    u64::from_le_bytes(v.to_le_bytes())
}

/// User names appear in `status` output and on command lines, so keep them shell-friendly.
/// What every store checks before adding an account: a valid name, not the reserved one, and
/// a password.
pub(crate) fn check_new_user(name: &str, password: &str) -> Result<(), StoreError> {
    if !valid_user_name(name) {
        return Err(StoreError::BadUserName { name: name.to_owned() });
    }
    if name == crate::http::LOCAL_ACTOR {
        return Err(StoreError::ReservedUserName { name: name.to_owned() });
    }
    check_new_password(password)
}

pub(crate) fn check_new_password(password: &str) -> Result<(), StoreError> {
    if password.is_empty() {
        return Err(StoreError::EmptyPassword);
    }
    Ok(())
}

/// An Argon2id PHC string of `password` with a fresh random salt.
pub(crate) fn hash_password(password: &str, params: argon2::Params) -> Result<String, StoreError> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| StoreError::PasswordHash { message: e.to_string() })?
        .to_string())
}

pub(crate) fn valid_user_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The Argon2id cost of admin passwords: m = 65536 KiB, t = 3, p = 1, the same as the shipped
/// serial KDF. A login is rare and local, so a fraction of a second per check is cheap, while
/// a stolen data dir makes offline guessing expensive.
pub fn password_params() -> Result<argon2::Params, StoreError> {
    argon2::Params::new(65536, 3, 1, None).map_err(|e| StoreError::PasswordHash { message: e.to_string() })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An empty SQLite file: ours to initialise.
    Fresh,
    Ours,
}

/// Tells our database from an empty file and from someone else's, using reads only, so that a
/// foreign file is left exactly as it was. Call it inside a transaction: its two reads must see
/// one snapshot, or a file another process is initialising looks foreign.
fn identify(conn: &Connection, db: &Path) -> Result<Kind, StoreError> {
    let app_id: i64 = conn.query_row("PRAGMA application_id", [], |r| r.get(0)).at(db)?;
    if app_id == APP_ID {
        return Ok(Kind::Ours);
    }
    if app_id != 0 {
        return Err(StoreError::NotLicUdp { path: db.to_owned(), why: "it belongs to another application" });
    }
    let objects: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0)).at(db)?;
    if objects == 0 {
        Ok(Kind::Fresh)
    } else {
        Err(StoreError::NotLicUdp { path: db.to_owned(), why: "it holds another program's tables" })
    }
}

fn meta<T: rusqlite::types::FromSql>(conn: &Connection, db: &Path, key: &str) -> Result<T, StoreError> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
        .at(db)?
        .ok_or_else(|| corrupt(db, format!("the meta table has no `{key}`")))
}

/// Checked before anything is written, so a newer lic-udp's file is never touched.
fn check_version(conn: &Connection, db: &Path) -> Result<(), StoreError> {
    let has_meta: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'", [], |r| {
            r.get(0)
        })
        .at(db)?;
    if has_meta == 0 {
        return Err(corrupt(db, "the meta table is missing"));
    }
    let found: i64 = meta(conn, db, META_SCHEMA_VERSION)?;
    if found != SCHEMA_VERSION {
        return Err(StoreError::UnknownSchema { path: db.to_owned(), found, supported: SCHEMA_VERSION });
    }
    Ok(())
}

fn read_epoch(conn: &Connection, db: &Path) -> Result<u32, StoreError> {
    let v: i64 = meta(conn, db, META_EPOCH)?;
    u32::try_from(v).map_err(|_| corrupt(db, format!("epoch {v} is out of range")))
}

fn read_fixed(conn: &Connection, db: &Path) -> Result<([u8; 16], KdfParams), StoreError> {
    let salt: Vec<u8> = meta(conn, db, META_SALT)?;
    let salt = blob::<16>(&salt, db, || "server_salt".into())?;
    let m: i64 = meta(conn, db, META_KDF_M)?;
    let t: i64 = meta(conn, db, META_KDF_T)?;
    let p: i64 = meta(conn, db, META_KDF_P)?;
    let bad = || corrupt(db, format!("KDF parameters m_kib={m} t={t} p={p} are out of range"));
    let kdf = KdfParams {
        m_kib: u32::try_from(m).map_err(|_| bad())?,
        t: u8::try_from(t).map_err(|_| bad())?,
        p: u8::try_from(p).map_err(|_| bad())?,
    };
    // Clients refuse anything else, so serving it would only fail later and less clearly.
    if !kdf.is_acceptable() {
        return Err(bad());
    }
    Ok((salt, kdf))
}

/// Runs once per data dir. The salt and KDF parameters chosen here are baked into every
/// license's keys, so they are written once and never updated.
fn initialise(conn: &mut Connection, db: &Path, kdf: KdfParams) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).at(db)?;
    // Another process may have initialised the file while we waited for the write lock.
    if identify(&tx, db)? == Kind::Ours {
        return Ok(());
    }
    let mut salt = [0u8; 16];
    OsRng.fill_bytes(&mut salt);
    tx.execute_batch(schema::CREATE).at(db)?;
    tx.execute_batch(schema::LEASES).at(db)?;
    tx.pragma_update(None, "application_id", APP_ID).at(db)?;
    {
        let mut put = tx.prepare("INSERT INTO meta (key, value) VALUES (?1, ?2)").at(db)?;
        put.execute(params![META_SCHEMA_VERSION, SCHEMA_VERSION]).at(db)?;
        put.execute(params![META_SALT, &salt[..]]).at(db)?;
        put.execute(params![META_KDF_M, kdf.m_kib]).at(db)?;
        put.execute(params![META_KDF_T, kdf.t]).at(db)?;
        put.execute(params![META_KDF_P, kdf.p]).at(db)?;
        put.execute(params![META_EPOCH, 0i64]).at(db)?;
    }
    tx.commit().at(db)
}

/// Switching to WAL takes an exclusive lock, and SQLite answers BUSY at once instead of calling
/// the busy handler when another connection is using the file, so this retries for as long as
/// the busy timeout would have waited. Only a fresh file switches: the mode is persistent, so
/// a store that exists is already in WAL and this is one read.
fn ensure_wal(conn: &Connection, db: &Path) -> Result<(), StoreError> {
    let start = Instant::now();
    loop {
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).at(db)?;
        if mode.eq_ignore_ascii_case("wal") {
            return Ok(());
        }
        // The answer is not checked: on a filesystem without WAL support the store still works,
        // with readers and the writer taking turns.
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0)) {
            Ok(_) => return Ok(()),
            Err(rusqlite::Error::SqliteFailure(f, _))
                if matches!(
                    f.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && start.elapsed() < BUSY_TIMEOUT =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(classify(db, e)),
        }
    }
}

fn create_dir(dir: &Path) -> Result<(), StoreError> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    // The data dir holds keys equivalent to every serial (proto-spec.md §10).
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(io_err(dir))?;
    tighten(dir)
}

/// A data dir the admin made by hand (to put a lic-udp.toml in it first, say) has the umask's
/// mode, often 0755; it holds keys equivalent to every serial, so make it 0700 and say so.
#[cfg(unix)]
fn tighten(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(dir).map_err(io_err(dir))?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
        tracing::warn!(
            "data dir {} was mode {mode:o}; set it to 700: it holds every license's keys",
            dir.display()
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn tighten(_: &Path) -> Result<(), StoreError> {
    Ok(())
}

/// Creates the db file ourselves so it is 0600 from its first byte; SQLite would use the umask,
/// and gives the -wal and -shm files the database's mode.
fn create_db_file(dir: &Path, db: &Path) -> Result<(), StoreError> {
    let mut o = fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    match o.open(db) {
        Ok(_) => {}
        // Another process got there first; it is initialised below like any empty file.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(io_err(db)(e)),
    }
    // The new directory entry must survive a crash like the data written into the file.
    #[cfg(unix)]
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Refuses a non-SQLite file before SQLite opens it: SQLite would create -wal and -shm files
/// next to it, and we promise to leave foreign files alone.
fn check_header(db: &Path) -> Result<(), StoreError> {
    let md = fs::metadata(db).map_err(io_err(db))?;
    if !md.is_file() {
        return Err(StoreError::NotLicUdp { path: db.to_owned(), why: "it is not a regular file" });
    }
    let mut head = Vec::with_capacity(SQLITE_MAGIC.len());
    fs::File::open(db)
        .and_then(|f| f.take(SQLITE_MAGIC.len() as u64).read_to_end(&mut head))
        .map_err(io_err(db))?;
    // Empty: just created, or created by a process that has not checkpointed its WAL yet.
    if head.is_empty() || head == SQLITE_MAGIC {
        Ok(())
    } else {
        Err(StoreError::NotLicUdp { path: db.to_owned(), why: "it is not an SQLite file" })
    }
}

/// The one handle on a data dir. Not `Sync`: the server keeps it behind a mutex.
pub struct Store {
    conn: Connection,
    dir: PathBuf,
    db: PathBuf,
    salt: [u8; 16],
    kdf: KdfParams,
    site: SiteConfig,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("db", &self.db).field("kdf", &self.kdf).finish_non_exhaustive()
    }
}

/// One license as stored. The serial is not among the fields because it was never stored.
#[derive(Clone, Debug)]
pub struct LicenseRow {
    pub id: i64,
    pub owner: String,
    pub type_name: String,
    pub seats: u16,
    pub created_unix: u64,
    pub expires_unix: Option<u64>,
    pub revoked_unix: Option<u64>,
    pub ttl: Duration,
    pub heartbeat: Duration,
    pub keys: LicenseKeys,
}

impl LicenseRow {
    /// What the protocol core needs of this license.
    pub fn record(&self) -> LicenseRecord {
        LicenseRecord {
            id: self.id,
            keys: self.keys.clone(),
            seats: self.seats,
            expires_unix: self.expires_unix,
            revoked: self.revoked_unix.is_some(),
            ttl: self.ttl,
            heartbeat: self.heartbeat,
        }
    }
}

/// A licenses row as SQLite returns it, before validation. Key material is wiped on drop.
struct RawLicense {
    id: i64,
    license_id: Vec<u8>,
    k_proof: Zeroizing<Vec<u8>>,
    k_auth: Zeroizing<Vec<u8>>,
    owner: String,
    type_name: String,
    seats: i64,
    created: i64,
    expires: Option<i64>,
    revoked: Option<i64>,
    ttl_ms: i64,
    heartbeat_ms: i64,
}

impl RawLicense {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            license_id: r.get(1)?,
            k_proof: Zeroizing::new(r.get(2)?),
            k_auth: Zeroizing::new(r.get(3)?),
            owner: r.get(4)?,
            type_name: r.get(5)?,
            seats: r.get(6)?,
            created: r.get(7)?,
            expires: r.get(8)?,
            revoked: r.get(9)?,
            ttl_ms: r.get(10)?,
            heartbeat_ms: r.get(11)?,
        })
    }

    fn validate(self, db: &Path) -> Result<LicenseRow, StoreError> {
        let id = self.id;
        let field = |name: &str| format!("license {id}: {name}");
        let seats = u16::try_from(self.seats)
            .ok()
            .filter(|&s| s >= 1)
            .ok_or_else(|| corrupt(db, format!("{} = {} is out of range", field("seats"), self.seats)))?;
        let opt = |v: Option<i64>, name: &str| v.map(|v| from_sql(v, db, || field(name))).transpose();
        let keys = LicenseKeys {
            license_id: blob(&self.license_id, db, || field("license_id"))?,
            k_proof: blob(&self.k_proof, db, || field("k_proof"))?,
            k_auth: blob(&self.k_auth, db, || field("k_auth"))?,
        };
        Ok(LicenseRow {
            id,
            seats,
            created_unix: from_sql(self.created, db, || field("created"))?,
            expires_unix: opt(self.expires, "expires")?,
            revoked_unix: opt(self.revoked, "revoked")?,
            ttl: Duration::from_millis(from_sql(self.ttl_ms, db, || field("ttl_ms"))?),
            heartbeat: Duration::from_millis(from_sql(self.heartbeat_ms, db, || field("heartbeat_ms"))?),
            keys,
            owner: self.owner,
            type_name: self.type_name,
        })
    }
}

impl Store {
    /// Opens the data dir, creating it (mode 0700) and its database (mode 0600) on first use.
    ///
    /// On creation the server salt comes from the OS RNG and the KDF parameters from the site
    /// file's `[kdf]`, else [`KdfParams::SHIPPED`]; both are pinned in the database from then on,
    /// because every license's keys depend on them. A later `[kdf]` is ignored.
    ///
    /// Refuses, without changing it, a file that is not a lic-udp database or has a schema
    /// version this build does not know.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Self::open_at(dir, true)
    }

    /// Like [`open`](Self::open) but never creates anything, for read-only commands: a mistyped
    /// data dir gets [`StoreError::NoDataDir`] instead of a fresh, empty store.
    pub fn open_existing(dir: &Path) -> Result<Store, StoreError> {
        Self::open_at(dir, false)
    }

    fn open_at(dir: &Path, create: bool) -> Result<Store, StoreError> {
        let db = dir.join(DB_FILE);
        let no_data = || StoreError::NoDataDir { dir: dir.to_owned() };
        if dir.exists() && !dir.is_dir() {
            return Err(StoreError::NotADirectory { dir: dir.to_owned() });
        }
        if create {
            create_dir(dir)?;
        } else if !dir.is_dir() || !db.exists() {
            return Err(no_data());
        }
        // Before the database exists, so a broken [kdf] is fixed before it gets pinned.
        let site = SiteConfig::load(dir)?;
        if create {
            create_db_file(dir, &db)?;
        }
        check_header(&db)?;
        // No SQLITE_OPEN_CREATE: the file exists by now, with our mode, or this is an error.
        let mut conn = Connection::open_with_flags(
            &db,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .at(&db)?;
        conn.busy_timeout(BUSY_TIMEOUT).at(&db)?;
        let kind = {
            // One read transaction, so all checks see the same snapshot even while another
            // process is initialising the file.
            let snapshot = conn.transaction().at(&db)?;
            let kind = identify(&snapshot, &db)?;
            match kind {
                Kind::Fresh if !create => return Err(no_data()),
                Kind::Ours => check_version(&snapshot, &db)?,
                Kind::Fresh => {}
            }
            kind
        };
        ensure_wal(&conn, &db)?;
        // Per connection, so set on every open.
        conn.pragma_update(None, "synchronous", "FULL").at(&db)?;
        if kind == Kind::Fresh {
            initialise(&mut conn, &db, site.kdf.unwrap_or(KdfParams::SHIPPED))?;
            check_version(&conn, &db)?;
        }
        let (salt, kdf) = read_fixed(&conn, &db)?;
        conn.execute_batch(audit::ENSURE).at(&db)?;
        conn.execute_batch(tokens::ENSURE).at(&db)?;
        who::ensure(&conn, &db)?;
        Ok(Store { conn, dir: dir.to_owned(), db, salt, kdf, site })
    }

    /// A second connection to the same database, for another thread of this process (the
    /// dashboard beside the UDP IO thread).
    ///
    /// Not [`open`](Self::open) again: that reads the file's header through a plain file
    /// handle, and closing any handle on a file drops every POSIX lock this process holds on
    /// it, SQLite's included. Another process's `lic-udp issue` would then believe it was the
    /// last user of the database and delete the live write-ahead log.
    pub fn another(&self) -> Result<Store, StoreError> {
        let conn = Connection::open_with_flags(
            &self.db,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .at(&self.db)?;
        conn.busy_timeout(BUSY_TIMEOUT).at(&self.db)?;
        conn.pragma_update(None, "synchronous", "FULL").at(&self.db)?;
        Ok(Store {
            conn,
            dir: self.dir.clone(),
            db: self.db.clone(),
            salt: self.salt,
            kdf: self.kdf,
            site: self.site.clone(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn db_path(&self) -> &Path {
        &self.db
    }

    pub fn server_salt(&self) -> [u8; 16] {
        self.salt
    }

    pub fn kdf(&self) -> KdfParams {
        self.kdf
    }

    /// The site file as it was when this store was opened, or last reloaded.
    pub fn site(&self) -> &SiteConfig {
        &self.site
    }

    /// Takes a reread site file (SIGHUP): types and audit bounds apply from now on. The store's
    /// KDF parameters stay those pinned when it was created, whatever the file's `[kdf]` says.
    pub fn set_site(&mut self, site: SiteConfig) {
        self.site = site;
    }

    /// Called once per server start, before the socket opens (proto-spec.md §7): a committed
    /// epoch is what makes old sessions STALE after a restart, so it must never repeat.
    pub fn bump_epoch(&mut self) -> Result<u32, StoreError> {
        let db = &self.db;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).at(db)?;
        let next = read_epoch(&tx, db)?.checked_add(1).ok_or(StoreError::EpochExhausted)?;
        tx.execute("UPDATE meta SET value = ?1 WHERE key = ?2", params![i64::from(next), META_EPOCH])
            .at(db)?;
        tx.commit().at(db)?;
        Ok(next)
    }

    pub fn epoch(&self) -> Result<u32, StoreError> {
        read_epoch(&self.conn, &self.db)
    }

    /// Adds a user whose password is kept as an Argon2id PHC string with a fresh random salt.
    /// The cost is [`password_params`].
    pub fn add_user(&mut self, name: &str, password: &str, admin: bool) -> Result<(), StoreError> {
        let params = password_params()?;
        self.add_user_with_params(name, password, admin, params)
    }

    /// [`add_user`](Self::add_user) with an explicit Argon2 cost, for tests and benchmarks that
    /// must not spend 64 MiB per user. [`check_user`](Self::check_user) reads the cost back from
    /// the PHC string, so users of different costs coexist.
    pub fn add_user_with_params(
        &mut self,
        name: &str,
        password: &str,
        admin: bool,
        params: argon2::Params,
    ) -> Result<(), StoreError> {
        check_new_user(name, password)?;
        let exists = |conn: &Connection| -> Result<bool, StoreError> {
            conn.query_row("SELECT 1 FROM users WHERE name = ?1", [name], |_| Ok(()))
                .optional()
                .map(|o| o.is_some())
                .at(&self.db)
        };
        // Checked before the slow hash too, so a taken name fails at once.
        if exists(&self.conn)? {
            return Err(StoreError::UserExists { name: name.to_owned() });
        }
        let phc = hash_password(password, params)?;
        let db = &self.db;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).at(db)?;
        // Another process may have added the same name while we hashed.
        let taken = tx
            .query_row("SELECT 1 FROM users WHERE name = ?1", [name], |_| Ok(()))
            .optional()
            .at(db)?
            .is_some();
        if taken {
            return Err(StoreError::UserExists { name: name.to_owned() });
        }
        tx.execute("INSERT INTO users (name, phc, admin) VALUES (?1, ?2, ?3)", params![name, phc, admin])
            .at(db)?;
        tx.commit().at(db)
    }

    /// Distinguishes an unknown user from a wrong password; the CLI runs locally, next to the
    /// data dir, so there is nobody to hide the user list from.
    pub fn check_user(&self, name: &str, password: &str) -> Result<(), StoreError> {
        self.check_user_counted(name, password, name)
    }

    /// [`check_user`](Self::check_user) for the dashboard's sign-in: its failures are counted
    /// apart from the CLI's, so someone failing web sign-ins cannot lock the admin out of
    /// `lic-udp issue` on the server host.
    pub fn check_web_user(&self, name: &str, password: &str) -> Result<(), StoreError> {
        self.check_user_counted(name, password, &format!("web:{name}"))
    }

    fn check_user_counted(&self, name: &str, password: &str, counter: &str) -> Result<(), StoreError> {
        self.login_gate(counter).map_err(|e| match e {
            StoreError::LoginThrottled { retry_after_s, .. } => {
                StoreError::LoginThrottled { name: name.to_owned(), retry_after_s }
            }
            e => e,
        })?;
        let phc: String = self
            .conn
            .query_row("SELECT phc FROM users WHERE name = ?1", [name], |r| r.get(0))
            .optional()
            .at(&self.db)?
            .ok_or_else(|| StoreError::NoSuchUser { name: name.to_owned() })?;
        let bad_hash =
            |e: password_hash::Error| corrupt(&self.db, format!("user `{name}`: password hash: {e}"));
        let hash = PasswordHash::new(&phc).map_err(bad_hash)?;
        match Argon2::default().verify_password(password.as_bytes(), &hash) {
            Ok(()) => self.login_result(counter, true),
            Err(password_hash::Error::Password) => {
                self.login_result(counter, false)?;
                Err(StoreError::WrongPassword { name: name.to_owned() })
            }
            Err(e) => Err(bad_hash(e)),
        }
    }

    /// Whether `name` may administer the store; [`StoreError::NoSuchUser`] if there is no such user.
    pub fn is_admin(&self, name: &str) -> Result<bool, StoreError> {
        self.conn
            .query_row("SELECT admin FROM users WHERE name = ?1", [name], |r| r.get(0))
            .optional()
            .at(&self.db)?
            .ok_or_else(|| StoreError::NoSuchUser { name: name.to_owned() })
    }

    pub fn user_count(&self) -> Result<usize, StoreError> {
        let n: i64 = self.conn.query_row("SELECT count(*) FROM users", [], |r| r.get(0)).at(&self.db)?;
        usize::try_from(n).map_err(|_| corrupt(&self.db, format!("user count {n}")))
    }

    /// Creates a license and returns its id and serial. The serial is shown once, to the caller,
    /// and never stored: only the keys derived from it are (proto-spec.md §3), so a copy of the
    /// data dir does not reveal serials. The license copies its type's terms, so later edits of
    /// the site file do not change it.
    pub fn issue(
        &mut self,
        owner: &str,
        ty: &LicenseType,
        seats_override: Option<u16>,
        now_unix: u64,
    ) -> Result<(i64, Serial), StoreError> {
        let seats = seats_override.unwrap_or(ty.seats);
        if seats == 0 {
            return Err(StoreError::BadSeats { seats });
        }
        let created = to_sql(now_unix, "issue time")?;
        let expires = match ty.validity {
            None => None,
            Some(v) => Some(to_sql(
                now_unix.checked_add(v.as_secs()).ok_or(StoreError::OutOfRange { what: "expiry time" })?,
                "expiry time",
            )?),
        };
        let ttl_ms = ms_to_sql(ty.lease_ttl, "lease TTL")?;
        let heartbeat_ms = ms_to_sql(ty.heartbeat, "heartbeat interval")?;
        for _ in 0..ISSUE_ATTEMPTS {
            let Some(serial) = Serial::from_number(OsRng.gen_range(0..SERIAL_SPACE)) else {
                continue;
            };
            // Slow (Argon2id), so outside any transaction: the server must not wait on it.
            let keys = derive_license_keys(&serial, &self.salt, self.kdf)?;
            let db = &self.db;
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).at(db)?;
            let inserted = tx.execute(
                "INSERT INTO licenses (license_id, k_proof, k_auth, owner, type, seats, created,
                                       expires, revoked, ttl_ms, heartbeat_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL, ?9, ?10)",
                params![
                    &keys.license_id[..],
                    &keys.k_proof[..],
                    &keys.k_auth[..],
                    owner,
                    ty.name,
                    seats,
                    created,
                    expires,
                    ttl_ms,
                    heartbeat_ms
                ],
            );
            match inserted {
                Ok(_) => {
                    let id = tx.last_insert_rowid();
                    audit::insert(
                        &tx,
                        db,
                        audit::Row {
                            ts: now_unix,
                            event: "issue",
                            license: Some(id),
                            actor: Some(owner),
                            detail: Some(format!(
                                "type {}, {seats} seat{}",
                                ty.name,
                                if seats == 1 { "" } else { "s" }
                            )),
                            ..audit::Row::default()
                        },
                    )?;
                    tx.commit().at(db)?;
                    return Ok((id, serial));
                }
                Err(rusqlite::Error::SqliteFailure(f, _))
                    if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE => {}
                Err(e) => return Err(classify(&self.db, e)),
            }
        }
        Err(StoreError::NoFreeLicenseId)
    }

    /// All licenses, ordered by id. One damaged row fails the whole call: serving a subset
    /// would silently deny seats that were paid for.
    pub fn licenses(&self) -> Result<Vec<LicenseRow>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT id, license_id, k_proof, k_auth, owner, type, seats, created, expires,
                        revoked, ttl_ms, heartbeat_ms
                 FROM licenses ORDER BY id",
            )
            .at(&self.db)?;
        let raw = st
            .query_map([], RawLicense::from_row)
            .at(&self.db)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .at(&self.db)?;
        raw.into_iter().map(|r| r.validate(&self.db)).collect()
    }

    /// Revocation is a timestamp, never a deletion: `status` keeps showing the license, and
    /// the server answers its holders with REVOKED instead of UNKNOWN. The owner and admin
    /// accounts may revoke.
    pub fn revoke(&mut self, id: i64, user: &str, now_unix: u64) -> Result<(), StoreError> {
        let admin = match self.is_admin(user) {
            Ok(a) => a,
            Err(StoreError::NoSuchUser { .. }) => false,
            Err(e) => return Err(e),
        };
        self.revoke_as(id, user, admin, now_unix)
    }

    /// [`revoke`](Self::revoke) for a caller already authenticated elsewhere (the dashboard):
    /// `actor` is named in the audit log, and `any` lets it revoke licenses it does not own.
    pub fn revoke_as(&mut self, id: i64, user: &str, any: bool, now_unix: u64) -> Result<(), StoreError> {
        let when = to_sql(now_unix, "revocation time")?;
        let db = &self.db;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).at(db)?;
        let (owner, revoked): (String, Option<i64>) = tx
            .query_row("SELECT owner, revoked FROM licenses WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .at(db)?
            .ok_or(StoreError::NoSuchLicense { id })?;
        // Ownership first, so other users learn nothing about the license's state.
        if owner != user && !any {
            return Err(StoreError::NotOwner { id, user: user.to_owned() });
        }
        if revoked.is_some() {
            return Err(StoreError::AlreadyRevoked { id });
        }
        tx.execute("UPDATE licenses SET revoked = ?1 WHERE id = ?2", params![when, id]).at(db)?;
        let row = audit::Row {
            ts: now_unix,
            event: "revoke",
            license: Some(id),
            actor: Some(user),
            ..audit::Row::default()
        };
        audit::insert(&tx, db, row)?;
        tx.commit().at(db)
    }

    /// The recorded grants, for the server to honour after a restart and for `status`.
    pub fn leases(&self) -> Result<Vec<RestoredLease>, StoreError> {
        let db = &self.db;
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT l.lease_id, l.license, l.instance_id, l.addr, l.since, h.who
                 FROM leases l LEFT JOIN lease_holders h ON h.lease_id = l.lease_id
                 ORDER BY l.since, l.lease_id",
            )
            .at(db)?;
        let raw = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, Option<String>>(5)?,
                ))
            })
            .at(db)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .at(db)?;
        raw.into_iter()
            .map(|(lease, license, instance, addr, since, who)| {
                let lease_id = lease_id_from_sql(lease);
                let field = |name: &str| format!("lease {lease_id:#018x}: {name}");
                if lease_id == 0 {
                    return Err(corrupt(db, "a lease has id 0, which the protocol never issues"));
                }
                Ok(RestoredLease {
                    lease_id,
                    license,
                    instance_id: blob(&instance, db, || field("instance_id"))?,
                    addr: addr
                        .parse()
                        .map_err(|_| corrupt(db, format!("{} {addr:?} is not an address", field("addr"))))?,
                    since_unix: from_sql(since, db, || field("since"))?,
                    // An unreadable identity only loses the name shown, never the seat.
                    who: who.as_deref().and_then(who::parse).map(std::sync::Arc::new),
                })
            })
            .collect()
    }

    /// The recorded leases that `grants` would replace (another lease of the same license and
    /// instance, whose removal is not written yet). A caller that writes those removals first
    /// keeps their end events in the audit log, which reads the lease's row.
    pub fn leases_replaced_by<'a>(
        &self,
        grants: impl IntoIterator<Item = &'a RestoredLease>,
    ) -> Result<Vec<u64>, StoreError> {
        let db = &self.db;
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT lease_id FROM leases WHERE license = ?1 AND instance_id = ?2 AND lease_id != ?3",
            )
            .at(db)?;
        let mut out = Vec::new();
        for g in grants {
            let id: Option<i64> = st
                .query_row(params![g.license, &g.instance_id[..], lease_id_to_sql(g.lease_id)], |r| r.get(0))
                .optional()
                .at(db)?;
            out.extend(id.map(lease_id_from_sql));
        }
        Ok(out)
    }

    /// Writes the server's grant journal in one transaction and returns only once it is on
    /// disk: a GRANT may leave only after this (proto-spec.md §7). Batching many grants into
    /// one call is what keeps the fsync rate bounded under load.
    pub fn apply(&mut self, ops: &[JournalOp]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let db = &self.db;
        let now = unix_now();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).at(db)?;
        {
            let mut grant = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO leases (lease_id, license, instance_id, addr, since)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .at(db)?;
            let mut remove = tx.prepare_cached("DELETE FROM leases WHERE lease_id = ?1").at(db)?;
            for op in ops {
                match op {
                    JournalOp::Grant(l) => {
                        let addr: SocketAddr = l.addr;
                        grant
                            .execute(params![
                                lease_id_to_sql(l.lease_id),
                                l.license,
                                &l.instance_id[..],
                                addr.to_string(),
                                to_sql(l.since_unix, "grant time")?,
                            ])
                            .at(db)?;
                        who::record(&tx, db, l)?;
                        audit::grant(&tx, db, l)?;
                    }
                    JournalOp::Remove { lease_id, why } => {
                        audit::end(&tx, db, *lease_id, why, now)?;
                        remove.execute([lease_id_to_sql(*lease_id)]).at(db)?;
                        who::forget(&tx, db, *lease_id)?;
                    }
                }
            }
        }
        tx.commit().at(db)
    }

    /// Changes whenever another connection commits, so the server can poll it cheaply and
    /// reread licenses only when `issue` or `revoke` ran elsewhere. Its own commits do not
    /// change it.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        self.conn.query_row("PRAGMA data_version", [], |r| r.get(0)).at(&self.db)
    }
}

#[cfg(test)]
mod tests;
