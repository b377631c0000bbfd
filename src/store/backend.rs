//! The store as the admin side sees it: accounts, licenses, tokens, the audit log and the
//! recorded holders. The CLI's account commands and the dashboard take a
//! `Box<dyn AdminStore>`, so they work the same on the embedded SQLite file and on etcd.
//!
//! # What a backend must guarantee
//!
//! - **Nothing issued is lost.** `issue` returns only after the license (its derived keys, never
//!   the serial) is durable; `add_user` and `add_token` likewise.
//! - **One name, one account; one license id, one license.** Creation is a compare-and-create,
//!   not a read-then-write, since two admins (or two nodes) may race.
//! - **Sign-in failures are counted where every entry point sees them**, so the throttle of
//!   `store/login.rs` holds across CLI invocations, dashboard sign-ins and, for a shared store,
//!   nodes.
//! - **`revoke_as` checks ownership before anything else** (an owner revokes their own
//!   licenses, an admin any), and records the revocation in the audit log in the same commit.
//! - **A shared store** (one that several servers grant from) also answers `holders` with every
//!   node's holders and frees a seat with `free_seat`: a removal that deletes only the version it
//!   read, so it never frees a seat someone took again meanwhile.
//!
//! The seat path (grants, renewals, expiries) is not here: it is the server's, and it differs by
//! nature. One server keeps its lease table in memory and journals grants to SQLite before they
//! leave (`server/batch.rs`); a node of a cluster grants through etcd transactions that count the
//! seats (`server/cluster.rs`, proto-spec.md §11). A PostgreSQL backend would implement this
//! trait and a cluster link of its own with the guarantees listed in `store/etcd/mod.rs`.

use crate::config::{AuditRetention, LicenseType, SiteConfig};
use crate::proto::keys::Serial;
use crate::proto::server::RestoredLease;

use super::etcd::EtcdStore;
use super::{Account, AuditEntry, AuditQuery, LicenseRow, Store, StoreError, TokenInfo};

/// One held seat as a store records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedHolder {
    pub lease: RestoredLease,
    /// The cluster node holding it; `None` for the one server of a SQLite store.
    pub node: Option<String>,
}

pub trait AdminStore: Send {
    /// What to call it in messages: a data dir, or an etcd URL.
    fn describe(&self) -> String;
    fn site(&self) -> &SiteConfig;
    /// A reread site file (SIGHUP) for this connection's later commands.
    fn set_site(&mut self, site: SiteConfig);
    /// Whether several servers grant from it (the holders and `free_seat` are then the
    /// store's, not one server's memory).
    fn shared(&self) -> bool;

    fn user_count(&self) -> Result<usize, StoreError>;
    fn add_user(&mut self, name: &str, password: &str, admin: bool) -> Result<(), StoreError>;
    /// The CLI's check; throttled (see module doc).
    fn check_user(&self, name: &str, password: &str) -> Result<(), StoreError>;
    /// The dashboard's sign-in; throttled apart from the CLI's.
    fn check_web_user(&self, name: &str, password: &str) -> Result<(), StoreError>;
    /// [`StoreError::NoSuchUser`] if the account is gone.
    fn is_admin(&self, name: &str) -> Result<bool, StoreError>;

    fn issue(
        &mut self,
        owner: &str,
        ty: &LicenseType,
        seats: Option<u16>,
        now_unix: u64,
    ) -> Result<(i64, Serial), StoreError>;
    fn licenses(&self) -> Result<Vec<LicenseRow>, StoreError>;
    fn revoke_as(&mut self, id: i64, user: &str, any: bool, now_unix: u64) -> Result<(), StoreError>;

    fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError>;
    /// Deletes at most `batch` events past the retention; returns how many went.
    fn prune_audit(&mut self, r: AuditRetention, now_unix: u64, batch: u32) -> Result<u64, StoreError>;

    /// Every account, with how many licenses and tokens it has.
    fn accounts(&self) -> Result<Vec<Account>, StoreError>;
    /// Sets a password; `by` is recorded in the audit log.
    fn set_password(&mut self, name: &str, password: &str, by: &str) -> Result<(), StoreError>;
    /// Removes an account and its tokens, its licenses going to `reassign`; refuses the last
    /// admin, and an owner of licenses without `reassign`. Returns how many were reassigned.
    fn remove_user(&mut self, name: &str, reassign: Option<&str>, by: &str) -> Result<usize, StoreError>;
    fn token_list(&self) -> Result<Vec<TokenInfo>, StoreError>;

    fn add_token(&mut self, user: &str) -> Result<String, StoreError>;
    fn token_user(&self, token: &str) -> Result<Option<String>, StoreError>;
    fn revoke_tokens(&mut self, user: &str) -> Result<usize, StoreError>;

    /// The holders as recorded: for SQLite the grant journal (one server's, as of its last
    /// commit), for etcd every node's records.
    fn holders(&self) -> Result<Vec<RecordedHolder>, StoreError>;
    /// Frees lease `lease` in the store; `None` if no such lease is recorded. Only a shared
    /// store can: one server's seats are freed through the server (`release` goes through its
    /// API), since its memory, not the journal, is the truth.
    fn free_seat(&mut self, lease: u64, by: &str) -> Result<Option<RecordedHolder>, StoreError>;
}

impl AdminStore for Store {
    fn describe(&self) -> String {
        format!("data dir {}", self.dir().display())
    }
    fn site(&self) -> &SiteConfig {
        Store::site(self)
    }
    fn set_site(&mut self, site: SiteConfig) {
        Store::set_site(self, site);
    }
    fn shared(&self) -> bool {
        false
    }
    fn user_count(&self) -> Result<usize, StoreError> {
        Store::user_count(self)
    }
    fn add_user(&mut self, name: &str, password: &str, admin: bool) -> Result<(), StoreError> {
        Store::add_user(self, name, password, admin)
    }
    fn check_user(&self, name: &str, password: &str) -> Result<(), StoreError> {
        Store::check_user(self, name, password)
    }
    fn check_web_user(&self, name: &str, password: &str) -> Result<(), StoreError> {
        Store::check_web_user(self, name, password)
    }
    fn is_admin(&self, name: &str) -> Result<bool, StoreError> {
        Store::is_admin(self, name)
    }
    fn issue(
        &mut self,
        owner: &str,
        ty: &LicenseType,
        seats: Option<u16>,
        now_unix: u64,
    ) -> Result<(i64, Serial), StoreError> {
        Store::issue(self, owner, ty, seats, now_unix)
    }
    fn licenses(&self) -> Result<Vec<LicenseRow>, StoreError> {
        Store::licenses(self)
    }
    fn revoke_as(&mut self, id: i64, user: &str, any: bool, now_unix: u64) -> Result<(), StoreError> {
        Store::revoke_as(self, id, user, any, now_unix)
    }
    fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        Store::audit(self, q)
    }
    fn prune_audit(&mut self, r: AuditRetention, now_unix: u64, batch: u32) -> Result<u64, StoreError> {
        Store::prune_audit(self, r, now_unix, batch)
    }
    fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        Store::accounts(self)
    }
    fn set_password(&mut self, name: &str, password: &str, by: &str) -> Result<(), StoreError> {
        Store::set_password(self, name, password, by)
    }
    fn remove_user(&mut self, name: &str, reassign: Option<&str>, by: &str) -> Result<usize, StoreError> {
        Store::remove_user(self, name, reassign, by)
    }
    fn token_list(&self) -> Result<Vec<TokenInfo>, StoreError> {
        Store::token_list(self)
    }
    fn add_token(&mut self, user: &str) -> Result<String, StoreError> {
        Store::add_token(self, user)
    }
    fn token_user(&self, token: &str) -> Result<Option<String>, StoreError> {
        Store::token_user(self, token)
    }
    fn revoke_tokens(&mut self, user: &str) -> Result<usize, StoreError> {
        Store::revoke_tokens(self, user)
    }
    fn holders(&self) -> Result<Vec<RecordedHolder>, StoreError> {
        Ok(self.leases()?.into_iter().map(|lease| RecordedHolder { lease, node: None }).collect())
    }
    fn free_seat(&mut self, _lease: u64, _by: &str) -> Result<Option<RecordedHolder>, StoreError> {
        Err(StoreError::NotShared)
    }
}

impl AdminStore for EtcdStore {
    fn describe(&self) -> String {
        self.url().to_string()
    }
    fn site(&self) -> &SiteConfig {
        EtcdStore::site(self)
    }
    fn set_site(&mut self, site: SiteConfig) {
        EtcdStore::set_site(self, site);
    }
    fn shared(&self) -> bool {
        true
    }
    fn user_count(&self) -> Result<usize, StoreError> {
        EtcdStore::user_count(self)
    }
    fn add_user(&mut self, name: &str, password: &str, admin: bool) -> Result<(), StoreError> {
        EtcdStore::add_user(self, name, password, admin)
    }
    fn check_user(&self, name: &str, password: &str) -> Result<(), StoreError> {
        EtcdStore::check_user(self, name, password)
    }
    fn check_web_user(&self, name: &str, password: &str) -> Result<(), StoreError> {
        EtcdStore::check_web_user(self, name, password)
    }
    fn is_admin(&self, name: &str) -> Result<bool, StoreError> {
        EtcdStore::is_admin(self, name)
    }
    fn issue(
        &mut self,
        owner: &str,
        ty: &LicenseType,
        seats: Option<u16>,
        now_unix: u64,
    ) -> Result<(i64, Serial), StoreError> {
        EtcdStore::issue(self, owner, ty, seats, now_unix)
    }
    fn licenses(&self) -> Result<Vec<LicenseRow>, StoreError> {
        EtcdStore::licenses(self)
    }
    fn revoke_as(&mut self, id: i64, user: &str, any: bool, now_unix: u64) -> Result<(), StoreError> {
        EtcdStore::revoke_as(self, id, user, any, now_unix)
    }
    fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        EtcdStore::audit(self, q)
    }
    fn prune_audit(&mut self, r: AuditRetention, now_unix: u64, _batch: u32) -> Result<u64, StoreError> {
        Ok(EtcdStore::prune_audit(self, r.keep, r.max_events, now_unix)?)
    }
    fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        EtcdStore::accounts(self)
    }
    fn set_password(&mut self, name: &str, password: &str, by: &str) -> Result<(), StoreError> {
        EtcdStore::set_password(self, name, password, by)
    }
    fn remove_user(&mut self, name: &str, reassign: Option<&str>, by: &str) -> Result<usize, StoreError> {
        EtcdStore::remove_user(self, name, reassign, by)
    }
    fn token_list(&self) -> Result<Vec<TokenInfo>, StoreError> {
        EtcdStore::token_list(self)
    }
    fn add_token(&mut self, user: &str) -> Result<String, StoreError> {
        EtcdStore::add_token(self, user)
    }
    fn token_user(&self, token: &str) -> Result<Option<String>, StoreError> {
        EtcdStore::token_user(self, token)
    }
    fn revoke_tokens(&mut self, user: &str) -> Result<usize, StoreError> {
        EtcdStore::revoke_tokens(self, user)
    }
    fn holders(&self) -> Result<Vec<RecordedHolder>, StoreError> {
        let snap = self.snapshot()?;
        let mut out: Vec<RecordedHolder> = snap
            .holders
            .into_iter()
            .filter_map(|(license, instance_id, rec, _)| {
                let lease = RestoredLease {
                    lease_id: rec.lease_id()?,
                    license,
                    instance_id,
                    addr: rec.addr.parse().ok()?,
                    since_unix: rec.since,
                    who: rec.who.map(std::sync::Arc::new),
                };
                Some(RecordedHolder { lease, node: Some(rec.node) })
            })
            .collect();
        out.sort_by_key(|h| (h.lease.since_unix, h.lease.lease_id));
        Ok(out)
    }
    fn free_seat(&mut self, lease: u64, by: &str) -> Result<Option<RecordedHolder>, StoreError> {
        let Some((license, instance_id, rec)) = EtcdStore::free_seat(self, lease, by)? else {
            return Ok(None);
        };
        let addr = rec
            .addr
            .parse()
            .map_err(|_| self.corrupt(format!("holder of lease {lease:016x}: address `{}`", rec.addr)))?;
        let who = rec.who.map(std::sync::Arc::new);
        let lease = RestoredLease { lease_id: lease, license, instance_id, addr, since_unix: rec.since, who };
        Ok(Some(RecordedHolder { lease, node: Some(rec.node) }))
    }
}
