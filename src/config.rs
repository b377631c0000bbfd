//! License types and the optional site file `<data dir>/lic-udp.toml`.
//!
//! A license copies its type's seats, validity, TTL and heartbeat when it is issued, so editing
//! this file changes future licenses only. That keeps a running license's terms stable however
//! the file evolves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::proto::keys::KdfParams;

/// The site file's name inside the data dir.
pub const FILE_NAME: &str = "lic-udp.toml";

/// Below this, the heartbeat traffic of a busy site would be the server's main load.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
/// Below this, ordinary scheduling hiccups on a client would lose its seat.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(1);
/// GRANT and ACK carry the TTL as `u32` milliseconds (proto-spec.md §2).
pub const MAX_LEASE_TTL: Duration = Duration::from_millis(u32::MAX as u64);

const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// What a license of this type gets when it is issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LicenseType {
    pub name: String,
    pub seats: u16,
    /// How long after issue the license stops granting seats; `None` never expires.
    pub validity: Option<Duration>,
    pub lease_ttl: Duration,
    pub heartbeat: Duration,
}

impl LicenseType {
    fn builtin(name: &str, seats: u16, validity: Option<Duration>) -> Self {
        Self {
            name: name.to_owned(),
            seats,
            validity,
            lease_ttl: DEFAULT_LEASE_TTL,
            heartbeat: DEFAULT_HEARTBEAT,
        }
    }
}

/// The types every site has unless its file overrides them.
pub fn builtin_types() -> BTreeMap<String, LicenseType> {
    [
        LicenseType::builtin("trial", 1, Some(DAY * 30)),
        LicenseType::builtin("team", 5, None),
        LicenseType::builtin("site", 100, None),
    ]
    .into_iter()
    .map(|t| (t.name.clone(), t))
    .collect()
}

/// Why the site file was refused. Each message names the file and what to change in it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("{}: type `{name}`: {problem}", path.display())]
    Type { path: PathBuf, name: String, problem: String },
    #[error("{}: [audit]: {problem}", path.display())]
    Audit { path: PathBuf, problem: String },
    #[error("{}: [kdf]: {problem}", path.display())]
    Kdf { path: PathBuf, problem: String },
    #[error("unknown license type `{name}`; known types: {known} (more can be defined under [types.NAME] in {FILE_NAME})")]
    UnknownType { name: String, known: String },
}

/// The license types of this site and, for tests only, weaker serial-KDF parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteConfig {
    pub types: BTreeMap<String, LicenseType>,
    /// Only consulted when the data dir is created: the store pins its parameters then.
    pub kdf: Option<KdfParams>,
    pub audit: AuditRetention,
}

impl Default for SiteConfig {
    fn default() -> Self {
        Self { types: builtin_types(), kdf: None, audit: AuditRetention::default() }
    }
}

/// How much of the audit log the server keeps (`[audit]` in the site file). Whichever bound
/// is hit first applies; the oldest events go first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditRetention {
    pub keep: Duration,
    pub max_events: u64,
}

impl Default for AuditRetention {
    /// Half a year covers the usual "who used it last quarter" question; a million events is
    /// about 150 MB of SQLite at most.
    fn default() -> Self {
        Self { keep: DAY * 183, max_events: 1_000_000 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    types: BTreeMap<String, RawType>,
    kdf: Option<RawKdf>,
    audit: Option<RawAudit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    keep: Option<String>,
    max_events: Option<i64>,
}

/// Every field optional so an override can name only what it changes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawType {
    /// Wider than `u16` so an out-of-range value gets our message, not serde's.
    seats: Option<i64>,
    validity: Option<String>,
    lease_ttl: Option<String>,
    heartbeat: Option<String>,
}

/// Separate from `KdfParams` so that unknown keys are refused and ranges get our message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKdf {
    m_kib: i64,
    t: i64,
    p: i64,
}

impl SiteConfig {
    /// Reads `<data_dir>/lic-udp.toml` if it exists; without it the site has the built-ins.
    pub fn load(data_dir: &Path) -> Result<SiteConfig, ConfigError> {
        let path = data_dir.join(FILE_NAME);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        Self::parse(&text, &path)
    }

    /// Parses the file's text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<SiteConfig, ConfigError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let mut types = builtin_types();
        for (name, rt) in raw.types {
            let base = types.get(&name).cloned();
            let ty = merge_type(path, &name, base, rt)?;
            types.insert(name, ty);
        }
        let kdf = raw.kdf.map(|k| check_kdf(path, k)).transpose()?;
        let audit = raw.audit.map(|a| check_audit(path, a)).transpose()?.unwrap_or_default();
        Ok(Self { types, kdf, audit })
    }

    pub fn get(&self, name: &str) -> Option<&LicenseType> {
        self.types.get(name)
    }

    /// Like [`get`](Self::get), with an error that lists what the user could have typed.
    pub fn require(&self, name: &str) -> Result<&LicenseType, ConfigError> {
        self.get(name).ok_or_else(|| self.unknown_type(name))
    }

    /// The error for a type name this site does not define, listing the ones it does.
    pub fn unknown_type(&self, name: &str) -> ConfigError {
        ConfigError::UnknownType { name: name.to_owned(), known: self.type_names().join(", ") }
    }

    /// Sorted, for stable messages and `--help` text.
    pub fn type_names(&self) -> Vec<&str> {
        self.types.keys().map(String::as_str).collect()
    }
}

fn check_audit(path: &Path, raw: RawAudit) -> Result<AuditRetention, ConfigError> {
    let err = |problem: String| ConfigError::Audit { path: path.to_owned(), problem };
    let mut a = AuditRetention::default();
    if let Some(k) = raw.keep {
        a.keep = humantime::parse_duration(&k)
            .map_err(|e| err(format!("keep = \"{k}\" is not a duration ({e}); write e.g. \"90d\"")))?;
        if a.keep < DAY {
            return Err(err(format!("keep = \"{k}\" is under a day; keep at least \"1d\"")));
        }
    }
    if let Some(n) = raw.max_events {
        a.max_events = u64::try_from(n)
            .ok()
            .filter(|&n| n >= 1000)
            .ok_or_else(|| err(format!("max_events = {n} is too small; keep at least 1000")))?;
    }
    Ok(a)
}

/// Type names end up on command lines and in `status` output, so keep them shell-friendly.
fn valid_type_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn merge_type(
    path: &Path,
    name: &str,
    base: Option<LicenseType>,
    raw: RawType,
) -> Result<LicenseType, ConfigError> {
    let err = |problem: String| ConfigError::Type { path: path.to_owned(), name: name.to_owned(), problem };
    if !valid_type_name(name) {
        return Err(
            err("a type name has 1 to 64 characters of A-Z a-z 0-9 . _ -; rename the section".into()),
        );
    }
    let dur = |field: &str, value: &str| {
        humantime::parse_duration(value).map_err(|e| {
            err(format!(
                "{field} = \"{value}\" is not a duration ({e}); write e.g. \"60s\", \"500ms\" or \"365d\""
            ))
        })
    };
    let seats = match (raw.seats, &base) {
        (Some(n), _) => u16::try_from(n)
            .ok()
            .filter(|&s| s >= 1)
            .ok_or_else(|| err(format!("seats = {n} is out of range; use 1 to 65535")))?,
        (None, Some(b)) => b.seats,
        (None, None) => return Err(err("seats is missing; a new type needs e.g. `seats = 10`".into())),
    };
    let validity = match (raw.validity.as_deref(), &base) {
        // Lets an override drop a built-in's expiry, which omission cannot express.
        (Some("never"), _) => None,
        (Some(v), _) => {
            let d = dur("validity", v)?;
            if d < Duration::from_secs(1) {
                return Err(err(format!(
                    "validity = \"{v}\" would expire licenses at once; use at least \"1s\", or \"never\""
                )));
            }
            Some(d)
        }
        (None, Some(b)) => b.validity,
        (None, None) => None,
    };
    let lease_ttl = match (raw.lease_ttl.as_deref(), &base) {
        (Some(v), _) => dur("lease_ttl", v)?,
        (None, Some(b)) => b.lease_ttl,
        (None, None) => DEFAULT_LEASE_TTL,
    };
    let heartbeat = match (raw.heartbeat.as_deref(), &base) {
        (Some(v), _) => dur("heartbeat", v)?,
        (None, Some(b)) => b.heartbeat,
        (None, None) => DEFAULT_HEARTBEAT,
    };
    check_lease_ttl("lease_ttl", lease_ttl).map_err(err)?;
    check_heartbeat("heartbeat", heartbeat).map_err(err)?;
    check_timers(("heartbeat", heartbeat), ("lease_ttl", lease_ttl)).map_err(err)?;
    Ok(LicenseType { name: name.to_owned(), seats, validity, lease_ttl, heartbeat })
}

fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The bounds of a lease TTL, from a license type or `serve --lease-ttl` (named `what`).
pub fn check_lease_ttl(what: &str, lease_ttl: Duration) -> Result<(), String> {
    if lease_ttl < MIN_LEASE_TTL {
        return Err(format!("{what} ({}) must be at least {}", show(lease_ttl), show(MIN_LEASE_TTL)));
    }
    if lease_ttl > MAX_LEASE_TTL {
        return Err(format!(
            "{what} ({}) must be at most {} (the protocol carries it in 32-bit milliseconds)",
            show(lease_ttl),
            show(MAX_LEASE_TTL)
        ));
    }
    Ok(())
}

/// The bounds of a heartbeat interval, from a license type or `serve --heartbeat`.
pub fn check_heartbeat(what: &str, heartbeat: Duration) -> Result<(), String> {
    if heartbeat < MIN_HEARTBEAT {
        return Err(format!("{what} ({}) must be at least {}", show(heartbeat), show(MIN_HEARTBEAT)));
    }
    Ok(())
}

/// A heartbeat must come well within the lease TTL it renews; each is named with where it
/// comes from.
pub fn check_timers(heartbeat: (&str, Duration), lease_ttl: (&str, Duration)) -> Result<(), String> {
    if heartbeat.1 >= lease_ttl.1 {
        return Err(format!(
            "{} ({}) must be shorter than {} ({}); a third of it or less lets a client miss heartbeats without losing its seat",
            heartbeat.0,
            show(heartbeat.1),
            lease_ttl.0,
            show(lease_ttl.1)
        ));
    }
    Ok(())
}

fn check_kdf(path: &Path, raw: RawKdf) -> Result<KdfParams, ConfigError> {
    let problem = |problem: String| ConfigError::Kdf { path: path.to_owned(), problem };
    let (Ok(m_kib), Ok(t), Ok(p)) = (u32::try_from(raw.m_kib), u8::try_from(raw.t), u8::try_from(raw.p))
    else {
        return Err(problem(format!(
            "m_kib = {}, t = {}, p = {} is out of range; clients accept m_kib 8..=1048576, t 1..=16, p 1..=8",
            raw.m_kib, raw.t, raw.p
        )));
    };
    let params = KdfParams { m_kib, t, p };
    // A server must not announce parameters its own clients would refuse.
    if !params.is_acceptable() {
        return Err(problem(format!(
            "m_kib = {m_kib}, t = {t}, p = {p} is out of range; clients accept m_kib 8..=1048576 (and at least 8 × p), t 1..=16, p 1..=8"
        )));
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SiteConfig, ConfigError> {
        SiteConfig::parse(text, Path::new("lic-udp.toml"))
    }

    fn parse_err(text: &str) -> String {
        match parse(text) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn builtins_without_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = SiteConfig::load(dir.path()).expect("load");
        assert_eq!(c, SiteConfig::default());
        assert_eq!(c.type_names(), ["site", "team", "trial"]);
        let trial = c.get("trial").expect("trial");
        assert_eq!(trial.seats, 1);
        assert_eq!(trial.validity, Some(Duration::from_secs(30 * 86400)));
        let team = c.get("team").expect("team");
        assert_eq!((team.seats, team.validity), (5, None));
        let site = c.get("site").expect("site");
        assert_eq!((site.seats, site.validity), (100, None));
        for t in c.types.values() {
            assert_eq!(t.lease_ttl, Duration::from_secs(60));
            assert_eq!(t.heartbeat, Duration::from_secs(15));
        }
        assert!(c.kdf.is_none());
    }

    #[test]
    fn file_adds_and_overrides_types() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(FILE_NAME),
            r#"
            [types.floating]
            seats = 20
            validity = "365d"
            lease_ttl = "30s"
            heartbeat = "5s"

            [types.team]
            seats = 8

            [types.trial]
            validity = "never"

            [kdf]
            m_kib = 1024
            t = 1
            p = 1
            "#,
        )
        .expect("write");
        let c = SiteConfig::load(dir.path()).expect("load");
        let f = c.get("floating").expect("floating");
        assert_eq!(
            *f,
            LicenseType {
                name: "floating".into(),
                seats: 20,
                validity: Some(Duration::from_secs(365 * 86400)),
                lease_ttl: Duration::from_secs(30),
                heartbeat: Duration::from_secs(5),
            }
        );
        let team = c.get("team").expect("team");
        assert_eq!(team.seats, 8);
        assert_eq!(team.lease_ttl, Duration::from_secs(60));
        assert_eq!(c.get("trial").map(|t| (t.seats, t.validity)), Some((1, None)));
        assert_eq!(c.kdf, Some(KdfParams::TEST));
    }

    #[test]
    fn new_type_gets_default_timers() {
        let c = parse("[types.x]\nseats = 3\n").expect("parse");
        let x = c.get("x").expect("x");
        assert_eq!(x.validity, None);
        assert_eq!(x.lease_ttl, Duration::from_secs(60));
        assert_eq!(x.heartbeat, Duration::from_secs(15));
    }

    #[test]
    fn heartbeat_must_be_shorter_than_ttl() {
        let e = parse_err("[types.x]\nseats = 1\nlease_ttl = \"10s\"\nheartbeat = \"20s\"\n");
        assert!(
            e.starts_with("lic-udp.toml: type `x`: heartbeat (20s) must be shorter than lease_ttl (10s)"),
            "{e}"
        );
        // An override that shortens the TTL below the built-in heartbeat is caught too.
        let e = parse_err("[types.team]\nlease_ttl = \"10s\"\n");
        assert!(e.contains("type `team`: heartbeat (15s)"), "{e}");
    }

    #[test]
    fn ranges_are_checked() {
        for (text, needle) in [
            ("[types.x]\nseats = 0\n", "seats = 0 is out of range"),
            ("[types.x]\nseats = 65536\n", "seats = 65536 is out of range"),
            ("[types.x]\nseats = -1\n", "seats = -1 is out of range"),
            ("[types.x]\n", "seats is missing"),
            (
                "[types.x]\nseats = 1\nlease_ttl = \"500ms\"\nheartbeat = \"100ms\"\n",
                "lease_ttl (500ms) must be at least 1s",
            ),
            ("[types.x]\nseats = 1\nheartbeat = \"50ms\"\n", "heartbeat (50ms) must be at least 100ms"),
            ("[types.x]\nseats = 1\nlease_ttl = \"60d\"\n", "must be at most"),
            ("[types.x]\nseats = 1\nvalidity = \"soon\"\n", "validity = \"soon\" is not a duration"),
            ("[types.x]\nseats = 1\nvalidity = \"0s\"\n", "expire licenses at once"),
            ("[types.\"a b\"]\nseats = 1\n", "a type name has"),
            ("[kdf]\nm_kib = 4\nt = 1\np = 1\n", "[kdf]: m_kib = 4"),
            ("[kdf]\nm_kib = 1024\nt = 300\np = 1\n", "[kdf]: m_kib = 1024, t = 300"),
        ] {
            let e = parse_err(text);
            assert!(e.contains(needle), "{text:?}: {e}");
            assert!(e.starts_with("lic-udp.toml: "), "{e}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        for text in [
            "[types.x]\nseats = 1\nseat = 2\n",
            "[kdf]\nm_kib = 1024\nt = 1\np = 1\nq = 1\n",
            "port = 7301\n",
        ] {
            let e = parse_err(text);
            assert!(e.starts_with("lic-udp.toml: "), "{e}");
            assert!(e.contains("unknown field"), "{e}");
        }
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A directory where the file should be cannot be read as text.
        std::fs::create_dir(dir.path().join(FILE_NAME)).expect("mkdir");
        let e = SiteConfig::load(dir.path()).expect_err("must fail");
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(e.to_string().contains(FILE_NAME), "{e}");
    }

    #[test]
    fn unknown_type_lists_known_ones() {
        let c = SiteConfig::default();
        let e = c.require("gold").expect_err("unknown");
        assert_eq!(
            e.to_string(),
            "unknown license type `gold`; known types: site, team, trial \
             (more can be defined under [types.NAME] in lic-udp.toml)"
        );
        assert!(c.require("team").is_ok());
    }
}
