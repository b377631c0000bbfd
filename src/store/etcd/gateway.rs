//! A small client for etcd's v3 JSON gateway (`/v3/kv/*`, `/v3/lease/*`), over the `ureq`
//! already in the tree.
//!
//! Why not the `etcd-client` crate: it needs `protoc` at build time and adds about 37 crates
//! (tonic, prost, h2 …) to every build, SQLite-only users included; the gateway is part of
//! every etcd 3.x server, speaks plain HTTP/1.1 with keep-alive, and costs about 1.3 ms per
//! transaction on loopback (../shared/research/ha-engines.md). We use a handful of calls, each
//! a JSON object in and out, so the whole client is this file.
//!
//! Keys and values travel base64-encoded; 64-bit integers come back as JSON strings (proto3's
//! JSON mapping). Endpoints are tried in turn: a connection error moves to the next one, so a
//! dead member does not stop a node that can reach the other two.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

/// Why a call to etcd failed. Grouped by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered (refused, reset, timed out): etcd is down or cut off.
    #[error("no etcd endpoint answered ({endpoints}): {last}; check that etcd runs and that this host can reach it")]
    Unreachable { endpoints: String, last: String },
    /// An endpoint answered with an error: no leader, request timed out, lease not found …
    #[error("etcd refused the request: {0}")]
    Refused(String),
    /// An answer we cannot read: not etcd, or a version we do not speak.
    #[error("unexpected answer from etcd at {endpoint}: {what}")]
    Protocol { endpoint: String, what: String },
}

impl EtcdError {
    /// Errors that say the cluster cannot commit right now (no quorum, leader lost), as opposed
    /// to a malformed request.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Refused(m) => {
                let m = m.to_ascii_lowercase();
                m.contains("timed out") || m.contains("leader") || m.contains("unavailable")
            }
            Self::Protocol { .. } => false,
        }
    }
}

/// One key as a range returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

/// A comparison in a transaction (etcd's `Compare`).
#[derive(Clone, Debug)]
pub enum Cmp {
    /// The key does not exist.
    Absent(Vec<u8>),
    /// The key's mod_revision equals this.
    ModEq(Vec<u8>, i64),
    /// Every key in `[from, to)` was last modified before this revision.
    RangeModBelow(Vec<u8>, Vec<u8>, i64),
    /// The key's value equals this.
    ValueEq(Vec<u8>, Vec<u8>),
}

/// An operation in a transaction's success branch.
#[derive(Clone, Debug)]
pub enum Op {
    Put { key: Vec<u8>, value: Vec<u8>, lease: i64 },
    Delete(Vec<u8>),
}

/// The end of a prefix range: the prefix with its last byte incremented.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn b64(b: &[u8]) -> String {
    B64.encode(b)
}

fn i64_field(v: &Value, name: &str) -> i64 {
    match v.get(name) {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn bytes_field(v: &Value, name: &str) -> Vec<u8> {
    v.get(name).and_then(Value::as_str).and_then(|s| B64.decode(s).ok()).unwrap_or_default()
}

fn kv(v: &Value) -> Kv {
    Kv {
        key: bytes_field(v, "key"),
        value: bytes_field(v, "value"),
        create_revision: i64_field(v, "create_revision"),
        mod_revision: i64_field(v, "mod_revision"),
        lease: i64_field(v, "lease"),
    }
}

/// One change a watch reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    Put(Kv),
    /// The key went (deleted, or its etcd lease ended) at this revision.
    Delete(Vec<u8>, i64),
}

/// Why a watch stream ended without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchEnd {
    /// Nothing arrived for the idle time, or etcd closed the stream: watch again from the
    /// last revision seen.
    Idle,
    /// etcd compacted past the revision asked for: read everything again.
    Compacted,
    /// `on_events` asked to stop.
    Stopped,
}

/// The gateway client. Cheap to share between threads (`ureq::Agent` pools connections).
pub struct Gateway {
    endpoints: Vec<String>,
    current: AtomicUsize,
    agent: ureq::Agent,
    /// For watch streams: no overall timeout, only a read timeout (the idle time).
    timeout_connect: Duration,
    /// How long transactions took, for `/metrics`.
    pub txn_time: crate::metrics::Histogram,
    /// Transactions whose compares failed (another node's grant came first): retried.
    pub conflicts: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("endpoints", &self.endpoints).finish_non_exhaustive()
    }
}

impl Gateway {
    /// `endpoints` are `host:port` pairs. `timeout` bounds each HTTP exchange: a minority
    /// member holds a write for about 7 s before it says "request timed out", and a node must
    /// know sooner that it cannot commit.
    pub fn new(endpoints: &[String], timeout: Duration) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout.min(Duration::from_secs(1)))
            .timeout(timeout)
            .max_idle_connections_per_host(4)
            .build();
        Self {
            endpoints: endpoints.iter().map(|e| format!("http://{e}")).collect(),
            current: AtomicUsize::new(0),
            agent,
            timeout_connect: timeout.min(Duration::from_secs(1)),
            txn_time: crate::metrics::Histogram::default(),
            conflicts: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn endpoints(&self) -> String {
        self.endpoints.iter().map(|e| e.trim_start_matches("http://")).collect::<Vec<_>>().join(",")
    }

    /// Posts `body` to `path`, moving to the next endpoint when one does not answer.
    fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let n = self.endpoints.len().max(1);
        let start = self.current.load(Ordering::Relaxed);
        let mut last = String::from("no endpoints");
        for i in 0..n {
            let idx = (start + i) % n;
            let Some(ep) = self.endpoints.get(idx) else { break };
            let url = format!("{ep}{path}");
            match self.agent.post(&url).send_json(body) {
                Ok(resp) => {
                    self.current.store(idx, Ordering::Relaxed);
                    return resp
                        .into_json::<Value>()
                        .map_err(|e| EtcdError::Protocol { endpoint: ep.clone(), what: e.to_string() });
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let text = resp.into_string().unwrap_or_default();
                    let msg = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| {
                            v.get("message")
                                .or_else(|| v.get("error"))
                                .and_then(Value::as_str)
                                .map(str::to_owned)
                        })
                        .unwrap_or(text);
                    // A member without a leader: another member may have one.
                    if msg.contains("leader") || msg.contains("timed out") || code == 503 {
                        last = format!("{ep}: {msg}");
                        continue;
                    }
                    return Err(EtcdError::Refused(format!("{msg} (HTTP {code})")));
                }
                Err(e) => last = e.to_string(),
            }
        }
        if last.contains("leader") || last.contains("timed out") {
            return Err(EtcdError::Refused(last));
        }
        Err(EtcdError::Unreachable { endpoints: self.endpoints(), last })
    }

    /// The cluster's version string, from the member that answers (`Maintenance.Status`).
    pub fn version(&self) -> Result<String, EtcdError> {
        let v = self.call("/v3/maintenance/status", &json!({}))?;
        Ok(v.get("version").and_then(Value::as_str).unwrap_or("").to_owned())
    }

    /// Keys under `prefix` (all of them), with the revision the read saw. Linearizable.
    pub fn range_prefix(&self, prefix: &[u8]) -> Result<(Vec<Kv>, i64), EtcdError> {
        let v =
            self.call("/v3/kv/range", &json!({"key": b64(prefix), "range_end": b64(&prefix_end(prefix))}))?;
        let rev = v.get("header").map_or(0, |h| i64_field(h, "revision"));
        let kvs =
            v.get("kvs").and_then(Value::as_array).map(|a| a.iter().map(kv).collect()).unwrap_or_default();
        Ok((kvs, rev))
    }

    /// The keys (only) in `[from, to)`, in key order, with the revision of the read.
    pub fn range_prefix_keys(&self, from: &[u8], to: &[u8]) -> Result<(Vec<Vec<u8>>, i64), EtcdError> {
        let v =
            self.call("/v3/kv/range", &json!({"key": b64(from), "range_end": b64(to), "keys_only": true}))?;
        let rev = v.get("header").map_or(0, |h| i64_field(h, "revision"));
        let keys = v
            .get("kvs")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|kv| bytes_field(kv, "key")).collect())
            .unwrap_or_default();
        Ok((keys, rev))
    }

    /// How many keys are under `prefix`, and the revision of that count.
    pub fn count_prefix(&self, prefix: &[u8]) -> Result<(u64, i64), EtcdError> {
        let v = self.call(
            "/v3/kv/range",
            &json!({"key": b64(prefix), "range_end": b64(&prefix_end(prefix)), "count_only": true}),
        )?;
        let rev = v.get("header").map_or(0, |h| i64_field(h, "revision"));
        Ok((u64::try_from(i64_field(&v, "count")).unwrap_or(0), rev))
    }

    /// One key, if it exists.
    pub fn get(&self, key: &[u8]) -> Result<Option<Kv>, EtcdError> {
        let v = self.call("/v3/kv/range", &json!({"key": b64(key)}))?;
        Ok(v.get("kvs").and_then(Value::as_array).and_then(|a| a.first()).map(kv))
    }

    /// A transaction: if every compare holds, run `ops`. Returns whether it did and the
    /// revision after it.
    pub fn txn(&self, cmps: &[Cmp], ops: &[Op]) -> Result<(bool, i64), EtcdError> {
        let compare: Vec<Value> = cmps
            .iter()
            .map(|c| match c {
                Cmp::Absent(k) => {
                    json!({"key": b64(k), "target": "CREATE", "result": "EQUAL", "create_revision": "0"})
                }
                Cmp::ModEq(k, r) => {
                    json!({"key": b64(k), "target": "MOD", "result": "EQUAL", "mod_revision": r.to_string()})
                }
                Cmp::RangeModBelow(from, to, r) => json!({
                    "key": b64(from), "range_end": b64(to), "target": "MOD", "result": "LESS",
                    "mod_revision": r.to_string()
                }),
                Cmp::ValueEq(k, val) => {
                    json!({"key": b64(k), "target": "VALUE", "result": "EQUAL", "value": b64(val)})
                }
            })
            .collect();
        let success: Vec<Value> = ops
            .iter()
            .map(|o| match o {
                Op::Put { key, value, lease } => {
                    json!({"request_put": {"key": b64(key), "value": b64(value), "lease": lease.to_string()}})
                }
                Op::Delete(k) => json!({"request_delete_range": {"key": b64(k)}}),
            })
            .collect();
        let started = std::time::Instant::now();
        let v = self.call("/v3/kv/txn", &json!({"compare": compare, "success": success}))?;
        self.txn_time.observe(started.elapsed());
        let ok = v.get("succeeded").and_then(Value::as_bool).unwrap_or(false);
        if !ok {
            self.conflicts.fetch_add(1, Ordering::Relaxed);
        }
        let rev = v.get("header").map_or(0, |h| i64_field(h, "revision"));
        Ok((ok, rev))
    }

    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<i64, EtcdError> {
        let v = self.call("/v3/kv/put", &json!({"key": b64(key), "value": b64(value)}))?;
        Ok(v.get("header").map_or(0, |h| i64_field(h, "revision")))
    }

    pub fn put_with_lease(&self, key: &[u8], value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let v = self
            .call("/v3/kv/put", &json!({"key": b64(key), "value": b64(value), "lease": lease.to_string()}))?;
        Ok(v.get("header").map_or(0, |h| i64_field(h, "revision")))
    }

    /// A new lease of `ttl_s` seconds; returns its id.
    pub fn lease_grant(&self, ttl_s: i64) -> Result<i64, EtcdError> {
        let v = self.call("/v3/lease/grant", &json!({"TTL": ttl_s.to_string()}))?;
        let id = i64_field(&v, "ID");
        if id == 0 {
            return Err(EtcdError::Refused(
                v.get("error").map(Value::to_string).unwrap_or_else(|| v.to_string()),
            ));
        }
        Ok(id)
    }

    /// Renews a lease; returns the TTL etcd now gives it, 0 if the lease is gone.
    pub fn keepalive(&self, id: i64) -> Result<i64, EtcdError> {
        let v = self.call("/v3/lease/keepalive", &json!({"ID": id.to_string()}))?;
        let r = v.get("result").unwrap_or(&v);
        if r.get("header").is_none() && v.get("error").is_some() {
            return Err(EtcdError::Refused(v.to_string()));
        }
        Ok(i64_field(r, "TTL"))
    }

    /// Streams the changes under `prefix` from revision `from`, calling `on_events` with each
    /// batch and the revision it brings the watcher to (false stops). Ends after `idle` without
    /// a message: a stream through a dead link looks exactly like a quiet one, so it is
    /// reopened rather than trusted forever.
    pub fn watch_prefix(
        &self,
        prefix: &[u8],
        from: i64,
        idle: Duration,
        mut on_events: impl FnMut(Vec<WatchEvent>, i64) -> bool,
    ) -> Result<WatchEnd, EtcdError> {
        use std::io::BufRead;
        let n = self.endpoints.len().max(1);
        let idx = self.current.load(Ordering::Relaxed) % n;
        let ep = self.endpoints.get(idx).cloned().unwrap_or_default();
        let agent =
            ureq::AgentBuilder::new().timeout_connect(self.timeout_connect).timeout_read(idle).build();
        let body = json!({"create_request": {
            "key": b64(prefix), "range_end": b64(&prefix_end(prefix)), "start_revision": from.to_string(),
        }});
        let resp = match agent.post(&format!("{ep}/v3/watch")).send_json(&body) {
            Ok(r) => r,
            Err(e) => {
                // The next call (any kind) starts at the next endpoint.
                self.current.store((idx + 1) % n, Ordering::Relaxed);
                return Err(EtcdError::Unreachable { endpoints: self.endpoints(), last: e.to_string() });
            }
        };
        let protocol = |what: String| EtcdError::Protocol { endpoint: ep.clone(), what };
        let mut lines = std::io::BufReader::new(resp.into_reader()).lines();
        loop {
            let line = match lines.next() {
                None => return Ok(WatchEnd::Idle),
                Some(Err(e))
                    if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) =>
                {
                    return Ok(WatchEnd::Idle)
                }
                Some(Err(e)) => {
                    return Err(EtcdError::Unreachable { endpoints: self.endpoints(), last: e.to_string() })
                }
                Some(Ok(l)) => l,
            };
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(&line).map_err(|e| protocol(e.to_string()))?;
            let Some(r) = v.get("result") else {
                return Err(EtcdError::Refused(
                    v.get("error").map(Value::to_string).unwrap_or_else(|| line.clone()),
                ));
            };
            if r.get("canceled").and_then(Value::as_bool) == Some(true) {
                return if i64_field(r, "compact_revision") > 0 {
                    Ok(WatchEnd::Compacted)
                } else {
                    Err(EtcdError::Refused(format!("the watch was cancelled: {line}")))
                };
            }
            let events: Vec<WatchEvent> = r
                .get("events")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|e| {
                            let k = kv(e.get("kv")?);
                            Some(match e.get("type").and_then(Value::as_str) {
                                Some("DELETE") => WatchEvent::Delete(k.key, k.mod_revision),
                                _ => WatchEvent::Put(k),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            // Events come in revision order: a batch brings the watcher to its last one. (The
            // `created` message carries none.)
            let Some(upto) = events
                .iter()
                .map(|e| match e {
                    WatchEvent::Put(k) => k.mod_revision,
                    WatchEvent::Delete(_, r) => *r,
                })
                .max()
            else {
                continue;
            };
            if !on_events(events, upto) {
                return Ok(WatchEnd::Stopped);
            }
        }
    }

    pub fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        match self.call("/v3/lease/revoke", &json!({"ID": id.to_string()})) {
            Ok(_) => Ok(()),
            Err(EtcdError::Refused(m)) if m.contains("not found") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
