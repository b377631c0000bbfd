//! Account upkeep on etcd, as `store/accounts.rs` does it on SQLite (the same refusals: not the
//! last admin; an owner of licenses only with `--reassign`). Each change commits with compares
//! on what it read, so two admins racing cannot, say, each remove the other and leave no admin.

use std::collections::HashMap;

use super::gateway::{Cmp, Op};
use super::{AuditRec, EtcdStore, LicenseRec, UserRec};
use crate::store::{check_new_password, hash_password, password_params, Account, StoreError, TokenInfo};

/// An account as read: name, record, key, mod_revision.
type UserRead = (String, UserRec, Vec<u8>, i64);

impl EtcdStore {
    fn user_recs(&self) -> Result<Vec<UserRead>, StoreError> {
        let prefix = self.key("user/");
        let (kvs, _) = self.gw.range_prefix(&prefix)?;
        kvs.into_iter()
            .map(|kv| {
                let name =
                    String::from_utf8_lossy(kv.key.get(prefix.len()..).unwrap_or_default()).into_owned();
                let rec: UserRec = serde_json::from_slice(&kv.value)
                    .map_err(|e| self.corrupt(format!("user `{name}`: {e}")))?;
                Ok((name, rec, kv.key, kv.mod_revision))
            })
            .collect()
    }

    fn token_recs(&self) -> Result<Vec<(super::access::TokenRec, Vec<u8>)>, StoreError> {
        let (kvs, _) = self.gw.range_prefix(&self.key("token/"))?;
        Ok(kvs.into_iter().filter_map(|kv| Some((serde_json::from_slice(&kv.value).ok()?, kv.key))).collect())
    }

    pub fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        let mut licenses: HashMap<String, usize> = HashMap::new();
        for l in self.licenses()? {
            *licenses.entry(l.owner).or_default() += 1;
        }
        let mut tokens: HashMap<String, usize> = HashMap::new();
        for (t, _) in self.token_recs()? {
            *tokens.entry(t.user).or_default() += 1;
        }
        let mut out: Vec<Account> = self
            .user_recs()?
            .into_iter()
            .map(|(name, rec, ..)| Account {
                licenses: licenses.get(&name).copied().unwrap_or(0),
                tokens: tokens.get(&name).copied().unwrap_or(0),
                admin: rec.admin,
                name,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn token_list(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let prefix_len = self.key("token/").len();
        let mut out: Vec<TokenInfo> = self
            .token_recs()?
            .into_iter()
            .map(|(t, key)| TokenInfo {
                id: String::from_utf8_lossy(key.get(prefix_len..prefix_len + 8).unwrap_or_default())
                    .into_owned(),
                user: t.user,
                created: t.created,
            })
            .collect();
        out.sort_by(|a, b| (&a.user, a.created).cmp(&(&b.user, b.created)));
        Ok(out)
    }

    pub fn set_password(&self, name: &str, password: &str, by: &str) -> Result<(), StoreError> {
        check_new_password(password)?;
        let phc = hash_password(password, password_params()?)?;
        let key = self.key(&format!("user/{name}"));
        let kv = self.gw.get(&key)?.ok_or_else(|| StoreError::NoSuchUser { name: name.to_owned() })?;
        let mut rec: UserRec =
            serde_json::from_slice(&kv.value).map_err(|e| self.corrupt(format!("user `{name}`: {e}")))?;
        rec.phc = phc;
        let value = serde_json::to_vec(&rec).map_err(|e| self.corrupt(format!("user `{name}`: {e}")))?;
        let mut ops = vec![Op::Put { key: key.clone(), value, lease: 0 }];
        ops.extend(self.audit_op(&admin_event("passwd", by, format!("account {name}"))));
        if !self.gw.txn(&[Cmp::ModEq(key, kv.mod_revision)], &ops)?.0 {
            return Err(StoreError::Contended { what: "the account" });
        }
        Ok(())
    }

    pub fn remove_user(&self, name: &str, reassign: Option<&str>, by: &str) -> Result<usize, StoreError> {
        let users = self.user_recs()?;
        let (_, me, my_key, my_rev) = users
            .iter()
            .find(|(n, ..)| n == name)
            .ok_or_else(|| StoreError::NoSuchUser { name: name.to_owned() })?;
        // Every admin's record unchanged since read: the count of admins holds at commit.
        let mut cmps: Vec<Cmp> = vec![Cmp::ModEq(my_key.clone(), *my_rev)];
        if me.admin {
            let admins: Vec<_> = users.iter().filter(|(_, r, ..)| r.admin).collect();
            if admins.len() <= 1 {
                return Err(StoreError::LastAdmin { name: name.to_owned() });
            }
            cmps.extend(
                admins.iter().filter(|(n, ..)| n != name).map(|(_, _, k, rev)| Cmp::ModEq(k.clone(), *rev)),
            );
        }
        let prefix = self.key("lic/");
        let (kvs, _) = self.gw.range_prefix(&prefix)?;
        let mut ops = Vec::new();
        let mut moved = 0;
        for kv in kvs {
            let Ok(mut rec) = serde_json::from_slice::<LicenseRec>(&kv.value) else { continue };
            if rec.owner != name {
                continue;
            }
            let Some(to) = reassign.filter(|to| *to != name) else {
                let count = self.licenses()?.iter().filter(|l| l.owner == name).count();
                return Err(StoreError::OwnsLicenses { name: name.to_owned(), count });
            };
            if !users.iter().any(|(n, ..)| n == to) {
                return Err(StoreError::NoSuchUser { name: to.to_owned() });
            }
            rec.owner = to.to_owned();
            let value = serde_json::to_vec(&rec).map_err(|e| self.corrupt(format!("license: {e}")))?;
            cmps.push(Cmp::ModEq(kv.key.clone(), kv.mod_revision));
            ops.push(Op::Put { key: kv.key, value, lease: 0 });
            moved += 1;
        }
        for (t, key) in self.token_recs()? {
            if t.user == name {
                ops.push(Op::Delete(key));
            }
        }
        ops.push(Op::Delete(my_key.clone()));
        let detail = match reassign {
            Some(to) if moved > 0 => format!("account {name}; {moved} licenses to {to}"),
            _ => format!("account {name}"),
        };
        ops.extend(self.audit_op(&admin_event("user-del", by, detail)));
        // etcd takes at most 128 operations in one transaction.
        if ops.len() > 128 {
            return Err(StoreError::TooBigForEtcd { name: name.to_owned(), ops: ops.len() });
        }
        if !self.gw.txn(&cmps, &ops)?.0 {
            return Err(StoreError::Contended { what: "the account" });
        }
        Ok(moved)
    }
}

fn admin_event(event: &str, by: &str, detail: String) -> AuditRec {
    AuditRec {
        ts: crate::unix_now(),
        event: event.to_owned(),
        actor: Some(by.to_owned()),
        detail: Some(detail),
        ..AuditRec::default()
    }
}
