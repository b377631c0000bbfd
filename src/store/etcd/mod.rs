//! The etcd store: several `lic-udp serve` nodes share one seat count (proto-spec.md §11).
//!
//! # Layout (under the deployment's prefix, `/lic-udp` by default)
//!
//! | key | value | etcd lease |
//! |---|---|---|
//! | `P/v1/meta` | salt and KDF parameters, pinned at creation | none |
//! | `P/v1/epoch` | the last boot epoch any node took | none |
//! | `P/v1/seq` | the last license id issued | none |
//! | `P/v1/lic/<id>` | one license: keys, seats, timers, validity, revocation | none |
//! | `P/v1/lid/<license_id>` | the license's store id, so two licenses never share a wire id | none |
//! | `P/v1/user/<name>` | an account's Argon2id PHC string and admin flag | none |
//! | `P/v1/node/<node id>` | a live node: its etcd lease, host, pid, address | the node's |
//! | `P/v1/h/<id>/<instance>` | one held seat: lease id, address, since, node | the node's |
//! | `P/v1/audit/<ms>-<who>-<pid>-<n>` | one audit event (grant, end, issue, revoke) | none |
//! | `P/v1/token/<sha256>` | an API token's account (only the token's hash is kept) | none |
//! | `P/v1/login/<counter>` | failed sign-ins in a row and the last one's time | none |
//!
//! # What this backend guarantees (and what another backend, e.g. PostgreSQL, must)
//!
//! - **A grant cannot exceed the seats.** A grant is one transaction whose compares fail if
//!   any holder record of the license was created or changed since the count it is based on
//!   (`mod_revision` of the whole `h/<id>/` range below the count's revision + 1), and if the
//!   instance already has a record. A read-then-write would over-grant under races.
//! - **A GRANT leaves only after its record committed** (etcd commits on a quorum).
//! - **A node deletes only what it wrote.** Removals compare the record's `mod_revision` with
//!   the one this node's own grant or takeover produced, so a record another node took over
//!   (or an admin freed and someone re-took) is never deleted by a late removal.
//! - **Heartbeats never touch etcd.** A node's holders live on one etcd lease per node, kept
//!   alive by a keepalive every [`NodeTimers::keepalive`] (a keepalive is leader memory only: no
//!   raft write). If the node dies, its records vanish one node-lease TTL later; holders that
//!   moved to another node meanwhile were taken over (their records re-attached to the new
//!   node's lease) and keep their seat.
//!
//! Accounts, API tokens, sign-in throttling, licenses, holders and the audit log all live in
//! etcd: a node's data dir holds only its site file and its node token.

mod access;
mod accounts;
mod audit;
mod gateway;
mod mirror;
mod node;
mod seats;

pub use audit::{AuditRec, MAX_GRANTS_PER_TXN};
pub use gateway::{EtcdError, Gateway};
pub use mirror::Mirror;
pub use node::{default_node_id, NodeConfig, NodeState, NodeTimers};
pub use seats::{GrantOutcome, HolderRecord, OwnedRecord, Snapshot};

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{self, PasswordHash, PasswordVerifier};
use argon2::Argon2;
use rand::rngs::OsRng;
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

use super::{
    check_new_user, hash_password, password_params, LicenseRow, StoreError, ISSUE_ATTEMPTS, SERIAL_SPACE,
};
use crate::config::{LicenseType, SiteConfig};
use crate::proto::keys::{derive_license_keys, KdfParams, LicenseKeys, Serial};

/// The oldest etcd this store works with: 3.4 has range compares in transactions and the
/// JSON gateway under `/v3/`.
pub const MIN_VERSION: (u32, u32) = (3, 4);

/// How long one request to etcd may take. A member without quorum holds a write for about
/// 7 s before refusing it; a node must learn sooner that it cannot commit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the cluster is: `etcd://HOST:PORT[,HOST:PORT…][/PREFIX]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdUrl {
    pub endpoints: Vec<String>,
    pub prefix: String,
}

impl std::str::FromStr for EtcdUrl {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, StoreError> {
        let bad = |why: &str| StoreError::BadStoreUrl { url: s.to_owned(), why: why.to_owned() };
        let rest = s.strip_prefix("etcd://").ok_or_else(|| bad("it must start with etcd://"))?;
        let (hosts, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/').to_owned()),
            None => (rest, String::new()),
        };
        let prefix = if prefix.is_empty() { "/lic-udp".to_owned() } else { prefix };
        if prefix.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad("the prefix may not contain spaces or control characters"));
        }
        let mut endpoints = Vec::new();
        for h in hosts.split(',').filter(|h| !h.is_empty()) {
            let Some((host, port)) = h.rsplit_once(':') else {
                return Err(bad(&format!("`{h}` has no port (write HOST:PORT, e.g. 10.0.0.1:2379)")));
            };
            if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(bad(&format!("`{h}` is not HOST:PORT")));
            }
            endpoints.push(h.to_owned());
        }
        if endpoints.is_empty() {
            return Err(bad("it names no etcd endpoint"));
        }
        Ok(Self { endpoints, prefix })
    }
}

impl std::fmt::Display for EtcdUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "etcd://{}{}", self.endpoints.join(","), self.prefix)
    }
}

#[derive(Serialize, Deserialize)]
struct Meta {
    app: String,
    schema: u32,
    salt: String,
    kdf_m_kib: u32,
    kdf_t: u8,
    kdf_p: u8,
}

const APP: &str = "lic-udp";
const SCHEMA: u32 = 1;

#[derive(Serialize, Deserialize)]
struct UserRec {
    phc: String,
    admin: bool,
}

#[derive(Serialize, Deserialize)]
struct LicenseRec {
    license_id: String,
    k_proof: String,
    k_auth: String,
    owner: String,
    #[serde(rename = "type")]
    type_name: String,
    seats: u16,
    created: u64,
    expires: Option<u64>,
    revoked: Option<u64>,
    ttl_ms: u64,
    heartbeat_ms: u64,
}

fn hex_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    hex::decode(s).ok().and_then(|v| <[u8; N]>::try_from(v.as_slice()).ok())
}

/// A handle on one deployment's data in etcd. Cloning shares the connection pool.
#[derive(Clone)]
pub struct EtcdStore {
    gw: Arc<Gateway>,
    url: EtcdUrl,
    salt: [u8; 16],
    kdf: KdfParams,
    site: SiteConfig,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("url", &self.url.to_string()).finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects and reads the deployment's pinned salt and KDF parameters, creating them on
    /// first use when `create` (`serve`, `user add`), as the SQLite store does. Refuses an
    /// etcd older than [`MIN_VERSION`] and a prefix that holds something else.
    pub fn open(url: &EtcdUrl, site: SiteConfig, create: bool) -> Result<Self, StoreError> {
        let gw = Arc::new(Gateway::new(&url.endpoints, REQUEST_TIMEOUT));
        check_version(&gw.version()?)?;
        let key = format!("{}/v1/meta", url.prefix).into_bytes();
        let meta = match gw.get(&key)? {
            Some(kv) => kv.value,
            None if !create => return Err(StoreError::NoEtcdData { url: url.to_string() }),
            None => {
                // Anything else under the prefix is another program's (or another layout's).
                let (n, _) = gw.count_prefix(format!("{}/", url.prefix).as_bytes())?;
                if n > 0 {
                    return Err(StoreError::ForeignPrefix { url: url.to_string() });
                }
                let mut salt = [0u8; 16];
                OsRng.fill_bytes(&mut salt);
                let kdf = site.kdf.unwrap_or(KdfParams::SHIPPED);
                let m = Meta {
                    app: APP.into(),
                    schema: SCHEMA,
                    salt: hex::encode(salt),
                    kdf_m_kib: kdf.m_kib,
                    kdf_t: kdf.t,
                    kdf_p: kdf.p,
                };
                let value = serde_json::to_vec(&m)
                    .map_err(|e| StoreError::PasswordHash { message: e.to_string() })?;
                // Two first starts racing: one creates, both read the same.
                gw.txn(
                    &[gateway::Cmp::Absent(key.clone())],
                    &[gateway::Op::Put { key: key.clone(), value, lease: 0 }],
                )?;
                // Said once per deployment, since a misspelled prefix lands here too.
                tracing::warn!(
                    "no lic-udp deployment under {url} yet: starting a new, empty one (if you meant an existing one, check the prefix)"
                );
                gw.get(&key)?.map(|kv| kv.value).ok_or(StoreError::NoEtcdData { url: url.to_string() })?
            }
        };
        let m: Meta =
            serde_json::from_slice(&meta).map_err(|_| StoreError::ForeignPrefix { url: url.to_string() })?;
        if m.app != APP {
            return Err(StoreError::ForeignPrefix { url: url.to_string() });
        }
        if m.schema != SCHEMA {
            return Err(StoreError::UnknownEtcdSchema {
                url: url.to_string(),
                found: m.schema,
                supported: SCHEMA,
            });
        }
        let salt = hex_array::<16>(&m.salt).ok_or(StoreError::ForeignPrefix { url: url.to_string() })?;
        let kdf = KdfParams { m_kib: m.kdf_m_kib, t: m.kdf_t, p: m.kdf_p };
        Ok(Self { gw, url: url.clone(), salt, kdf, site })
    }

    pub fn url(&self) -> &EtcdUrl {
        &self.url
    }

    pub fn server_salt(&self) -> [u8; 16] {
        self.salt
    }

    pub fn kdf(&self) -> KdfParams {
        self.kdf
    }

    pub fn site(&self) -> &SiteConfig {
        &self.site
    }

    /// See [`Store::set_site`](crate::store::Store::set_site).
    pub fn set_site(&mut self, site: SiteConfig) {
        self.site = site;
    }

    pub(crate) fn gateway(&self) -> &Arc<Gateway> {
        &self.gw
    }

    pub(crate) fn corrupt(&self, what: String) -> StoreError {
        StoreError::EtcdCorrupt { url: self.url.to_string(), what }
    }

    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}/v1/{rest}", self.url.prefix).into_bytes()
    }

    /// Takes the next boot epoch of the whole cluster, so that no two node starts share one.
    pub fn bump_epoch(&self) -> Result<u32, StoreError> {
        let key = self.key("epoch");
        for _ in 0..20 {
            let cur = self.gw.get(&key)?;
            let (n, cmp) = match &cur {
                Some(kv) => (
                    std::str::from_utf8(&kv.value).ok().and_then(|s| s.parse::<u32>().ok()).unwrap_or(0),
                    gateway::Cmp::ModEq(key.clone(), kv.mod_revision),
                ),
                None => (0, gateway::Cmp::Absent(key.clone())),
            };
            let next = n.checked_add(1).ok_or(StoreError::EpochExhausted)?;
            let put = gateway::Op::Put { key: key.clone(), value: next.to_string().into_bytes(), lease: 0 };
            if self.gw.txn(&[cmp], &[put])?.0 {
                return Ok(next);
            }
        }
        Err(StoreError::Contended { what: "the boot epoch" })
    }

    // --- Accounts.

    pub fn user_count(&self) -> Result<usize, StoreError> {
        let (n, _) = self.gw.count_prefix(&self.key("user/"))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    pub fn add_user(&self, name: &str, password: &str, admin: bool) -> Result<(), StoreError> {
        self.add_user_with_params(name, password, admin, password_params()?)
    }

    pub fn add_user_with_params(
        &self,
        name: &str,
        password: &str,
        admin: bool,
        params: argon2::Params,
    ) -> Result<(), StoreError> {
        check_new_user(name, password)?;
        let key = self.key(&format!("user/{name}"));
        if self.gw.get(&key)?.is_some() {
            return Err(StoreError::UserExists { name: name.to_owned() });
        }
        let phc = hash_password(password, params)?;
        let value = serde_json::to_vec(&UserRec { phc, admin })
            .map_err(|e| StoreError::PasswordHash { message: e.to_string() })?;
        let (ok, _) = self
            .gw
            .txn(&[gateway::Cmp::Absent(key.clone())], &[gateway::Op::Put { key, value, lease: 0 }])?;
        if !ok {
            return Err(StoreError::UserExists { name: name.to_owned() });
        }
        Ok(())
    }

    fn user(&self, name: &str) -> Result<UserRec, StoreError> {
        let kv = self.gw.get(&self.key(&format!("user/{name}")))?;
        let kv = kv.ok_or_else(|| StoreError::NoSuchUser { name: name.to_owned() })?;
        serde_json::from_slice(&kv.value).map_err(|e| StoreError::EtcdCorrupt {
            url: self.url.to_string(),
            what: format!("user `{name}`: {e}"),
        })
    }

    /// As [`Store::check_user`](super::Store::check_user), throttled the same way (in etcd, so
    /// the count holds across nodes).
    pub fn check_user(&self, name: &str, password: &str) -> Result<(), StoreError> {
        self.check_user_counted(name, password, name)
    }

    /// The dashboard's sign-in, counted apart from the CLI's as with SQLite.
    pub fn check_web_user(&self, name: &str, password: &str) -> Result<(), StoreError> {
        self.check_user_counted(name, password, &format!("web:{name}"))
    }

    fn check_user_counted(&self, name: &str, password: &str, counter: &str) -> Result<(), StoreError> {
        self.login_gate(name, counter)?;
        let u = self.user(name)?;
        let bad_hash = |e: password_hash::Error| StoreError::EtcdCorrupt {
            url: self.url.to_string(),
            what: format!("user `{name}`: password hash: {e}"),
        };
        let hash = PasswordHash::new(&u.phc).map_err(bad_hash)?;
        match Argon2::default().verify_password(password.as_bytes(), &hash) {
            Ok(()) => self.login_result(counter, true),
            Err(password_hash::Error::Password) => {
                self.login_result(counter, false)?;
                Err(StoreError::WrongPassword { name: name.to_owned() })
            }
            Err(e) => Err(bad_hash(e)),
        }
    }

    pub fn is_admin(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.user(name)?.admin)
    }

    // --- Licenses.

    /// As [`Store::issue`](super::Store::issue): the serial is returned once and never stored.
    pub fn issue(
        &self,
        owner: &str,
        ty: &LicenseType,
        seats_override: Option<u16>,
        now_unix: u64,
    ) -> Result<(i64, Serial), StoreError> {
        let seats = seats_override.unwrap_or(ty.seats);
        if seats == 0 {
            return Err(StoreError::BadSeats { seats });
        }
        let expires = match ty.validity {
            None => None,
            Some(v) => Some(
                now_unix.checked_add(v.as_secs()).ok_or(StoreError::OutOfRange { what: "expiry time" })?,
            ),
        };
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        for _ in 0..ISSUE_ATTEMPTS {
            let Some(serial) = Serial::from_number(OsRng.gen_range(0..SERIAL_SPACE)) else {
                continue;
            };
            let keys = derive_license_keys(&serial, &self.salt, self.kdf)?;
            let rec = LicenseRec {
                license_id: hex::encode(keys.license_id),
                k_proof: hex::encode(keys.k_proof),
                k_auth: hex::encode(keys.k_auth),
                owner: owner.to_owned(),
                type_name: ty.name.clone(),
                seats,
                created: now_unix,
                expires,
                revoked: None,
                ttl_ms: ms(ty.lease_ttl),
                heartbeat_ms: ms(ty.heartbeat),
            };
            let value =
                serde_json::to_vec(&rec).map_err(|e| StoreError::PasswordHash { message: e.to_string() })?;
            let lid_key = self.key(&format!("lid/{}", rec.license_id));
            let seq_key = self.key("seq");
            for _ in 0..20 {
                let cur = self.gw.get(&seq_key)?;
                let (last, seq_cmp) = match &cur {
                    Some(kv) => (
                        std::str::from_utf8(&kv.value).ok().and_then(|s| s.parse::<i64>().ok()).unwrap_or(0),
                        gateway::Cmp::ModEq(seq_key.clone(), kv.mod_revision),
                    ),
                    None => (0, gateway::Cmp::Absent(seq_key.clone())),
                };
                let id = last + 1;
                let mut ops = vec![
                    gateway::Op::Put { key: seq_key.clone(), value: id.to_string().into_bytes(), lease: 0 },
                    gateway::Op::Put { key: self.lic_key(id), value: value.clone(), lease: 0 },
                    gateway::Op::Put { key: lid_key.clone(), value: id.to_string().into_bytes(), lease: 0 },
                ];
                ops.extend(self.audit_op(&AuditRec {
                    ts: now_unix,
                    event: "issue".to_owned(),
                    license: Some(id),
                    actor: Some(owner.to_owned()),
                    detail: Some(format!(
                        "type {}, {seats} seat{}",
                        ty.name,
                        if seats == 1 { "" } else { "s" }
                    )),
                    ..AuditRec::default()
                }));
                let (ok, _) = self.gw.txn(&[seq_cmp, gateway::Cmp::Absent(lid_key.clone())], &ops)?;
                if ok {
                    return Ok((id, serial));
                }
                if self.gw.get(&lid_key)?.is_some() {
                    break; // the wire id is taken: another serial
                }
            }
        }
        Err(StoreError::NoFreeLicenseId)
    }

    fn lic_key(&self, id: i64) -> Vec<u8> {
        self.key(&format!("lic/{id:020}"))
    }

    fn parse_license(&self, id: i64, value: &[u8]) -> Result<LicenseRow, StoreError> {
        let corrupt = |what: String| StoreError::EtcdCorrupt { url: self.url.to_string(), what };
        let r: LicenseRec =
            serde_json::from_slice(value).map_err(|e| corrupt(format!("license {id}: {e}")))?;
        let keys = LicenseKeys {
            license_id: hex_array(&r.license_id)
                .ok_or_else(|| corrupt(format!("license {id}: license_id")))?,
            k_proof: hex_array(&r.k_proof).ok_or_else(|| corrupt(format!("license {id}: k_proof")))?,
            k_auth: hex_array(&r.k_auth).ok_or_else(|| corrupt(format!("license {id}: k_auth")))?,
        };
        if r.seats == 0 {
            return Err(corrupt(format!("license {id}: 0 seats")));
        }
        // Timers from etcd are checked as the site file's are: a huge TTL would overflow the
        // server's clock arithmetic.
        let (ttl, hb) = (Duration::from_millis(r.ttl_ms), Duration::from_millis(r.heartbeat_ms));
        crate::config::check_lease_ttl("lease TTL", ttl)
            .and_then(|()| crate::config::check_heartbeat("heartbeat", hb))
            .and_then(|()| crate::config::check_timers(("heartbeat", hb), ("lease TTL", ttl)))
            .map_err(|e| corrupt(format!("license {id}: {e}")))?;
        Ok(LicenseRow {
            id,
            owner: r.owner,
            type_name: r.type_name,
            seats: r.seats,
            created_unix: r.created,
            expires_unix: r.expires,
            revoked_unix: r.revoked,
            ttl: Duration::from_millis(r.ttl_ms),
            heartbeat: Duration::from_millis(r.heartbeat_ms),
            keys,
        })
    }

    /// All licenses, ordered by id; with the revision of the read, which changes whenever
    /// anything in the deployment changed.
    pub fn licenses_at(&self) -> Result<(Vec<LicenseRow>, i64), StoreError> {
        let (kvs, rev) = self.gw.range_prefix(&self.key("lic/"))?;
        let prefix_len = self.key("lic/").len();
        let mut rows = Vec::with_capacity(kvs.len());
        for kv in kvs {
            let id = std::str::from_utf8(kv.key.get(prefix_len..).unwrap_or_default())
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| StoreError::EtcdCorrupt {
                    url: self.url.to_string(),
                    what: format!("license key {:?}", String::from_utf8_lossy(&kv.key)),
                })?;
            rows.push(self.parse_license(id, &kv.value)?);
        }
        rows.sort_by_key(|r| r.id);
        Ok((rows, rev))
    }

    pub fn licenses(&self) -> Result<Vec<LicenseRow>, StoreError> {
        Ok(self.licenses_at()?.0)
    }

    /// As [`Store::revoke_as`](super::Store::revoke_as).
    pub fn revoke_as(&self, id: i64, user: &str, any: bool, now_unix: u64) -> Result<(), StoreError> {
        let key = self.lic_key(id);
        for _ in 0..20 {
            let kv = self.gw.get(&key)?.ok_or(StoreError::NoSuchLicense { id })?;
            let row = self.parse_license(id, &kv.value)?;
            if row.owner != user && !any {
                return Err(StoreError::NotOwner { id, user: user.to_owned() });
            }
            if row.revoked_unix.is_some() {
                return Err(StoreError::AlreadyRevoked { id });
            }
            let mut rec: LicenseRec = serde_json::from_slice(&kv.value)
                .map_err(|e| StoreError::EtcdCorrupt { url: self.url.to_string(), what: e.to_string() })?;
            rec.revoked = Some(now_unix);
            let value =
                serde_json::to_vec(&rec).map_err(|e| StoreError::PasswordHash { message: e.to_string() })?;
            let mut ops = vec![gateway::Op::Put { key: key.clone(), value, lease: 0 }];
            ops.extend(self.audit_op(&AuditRec {
                ts: now_unix,
                event: "revoke".to_owned(),
                license: Some(id),
                actor: Some(user.to_owned()),
                ..AuditRec::default()
            }));
            if self.gw.txn(&[gateway::Cmp::ModEq(key.clone(), kv.mod_revision)], &ops)?.0 {
                return Ok(());
            }
        }
        Err(StoreError::Contended { what: "the license" })
    }

    /// Whether `user` may act on license `id`: its owner, or an admin.
    pub fn may_manage(&self, user: &str, id: i64) -> Result<bool, StoreError> {
        if self.is_admin(user)? {
            return Ok(true);
        }
        let kv = self.gw.get(&self.lic_key(id))?.ok_or(StoreError::NoSuchLicense { id })?;
        Ok(self.parse_license(id, &kv.value)?.owner == user)
    }

    pub fn revoke(&self, id: i64, user: &str, now_unix: u64) -> Result<(), StoreError> {
        let admin = match self.is_admin(user) {
            Ok(a) => a,
            Err(StoreError::NoSuchUser { .. }) => false,
            Err(e) => return Err(e),
        };
        self.revoke_as(id, user, admin, now_unix)
    }
}

/// Parses `3.4.23` and refuses anything below [`MIN_VERSION`].
fn check_version(v: &str) -> Result<(), StoreError> {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if found < MIN_VERSION {
        return Err(StoreError::EtcdTooOld {
            found: v.to_owned(),
            need: format!("{}.{}", MIN_VERSION.0, MIN_VERSION.1),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_default_prefix() {
        let u: EtcdUrl = "etcd://10.0.0.1:2379,10.0.0.2:2379".parse().expect("url");
        assert_eq!(u.endpoints, vec!["10.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(u.prefix, "/lic-udp");
        let u: EtcdUrl = "etcd://h:1/site-a/".parse().expect("url");
        assert_eq!(u.prefix, "/site-a");
        assert_eq!(u.to_string(), "etcd://h:1/site-a");
    }

    #[test]
    fn bad_urls_say_why() {
        for bad in ["http://h:1", "etcd://", "etcd://host", "etcd://h:0", "etcd://:5", "etcd://h:1/a b"] {
            let e = bad.parse::<EtcdUrl>().expect_err(bad);
            assert!(matches!(e, StoreError::BadStoreUrl { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn old_etcd_is_refused() {
        assert!(check_version("3.4.23").is_ok());
        assert!(check_version("3.5.0").is_ok());
        assert!(matches!(check_version("3.3.9"), Err(StoreError::EtcdTooOld { .. })));
        assert!(matches!(check_version(""), Err(StoreError::EtcdTooOld { .. })));
    }
}
