//! The on-disk layout, version 1. A later version adds a migration here and bumps
//! [`SCHEMA_VERSION`]; an older lic-udp then refuses the file instead of misreading it.

/// `PRAGMA application_id` of every lic-udp database ("LUDB"), so that `open` can tell its own
/// file from someone else's SQLite database without touching either.
pub const APP_ID: i64 = 0x4C55_4442;

pub const SCHEMA_VERSION: i64 = 1;

/// STRICT tables make SQLite itself refuse a value of the wrong type, and the CHECKs catch
/// key material of the wrong length at write time; reads still validate, because a file can
/// be edited by other tools.
pub const CREATE: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value ANY NOT NULL
) STRICT;

CREATE TABLE users (
    name  TEXT PRIMARY KEY NOT NULL,
    phc   TEXT NOT NULL,
    admin INTEGER NOT NULL CHECK (admin IN (0, 1))
) STRICT;

-- AUTOINCREMENT: an id printed to an admin never comes to mean another license.
CREATE TABLE licenses (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    license_id   BLOB NOT NULL UNIQUE CHECK (length(license_id) = 8),
    k_proof      BLOB NOT NULL CHECK (length(k_proof) = 32),
    k_auth       BLOB NOT NULL CHECK (length(k_auth) = 32),
    owner        TEXT NOT NULL,
    type         TEXT NOT NULL,
    seats        INTEGER NOT NULL CHECK (seats BETWEEN 1 AND 65535),
    created      INTEGER NOT NULL,
    expires      INTEGER,
    revoked      INTEGER,
    ttl_ms       INTEGER NOT NULL,
    heartbeat_ms INTEGER NOT NULL
) STRICT;

";

/// The grant journal, kept apart so that `--recover` can recreate it exactly.
pub const LEASES: &str = "
-- lease_id is the u64 from the wire, stored with the same bits as an i64.
-- UNIQUE (license, instance_id): one instance holds at most one seat of a license
-- (proto-spec.md §2), so a newer grant replaces a row whose removal was never recorded.
CREATE TABLE leases (
    lease_id    INTEGER PRIMARY KEY,
    license     INTEGER NOT NULL,
    instance_id BLOB NOT NULL CHECK (length(instance_id) = 16),
    addr        TEXT NOT NULL,
    since       INTEGER NOT NULL,
    UNIQUE (license, instance_id)
) STRICT;
";

pub const META_SCHEMA_VERSION: &str = "schema_version";
pub const META_SALT: &str = "server_salt";
pub const META_KDF_M: &str = "kdf_m_kib";
pub const META_KDF_T: &str = "kdf_t";
pub const META_KDF_P: &str = "kdf_p";
pub const META_EPOCH: &str = "epoch";
