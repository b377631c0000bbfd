//! The activation file: the serial entered once, with the keys derived from it, so that later
//! `verify` and `run` need neither `--serial` nor a new Argon2 run (proto-spec.md §8).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::client::CachedKeys;
use crate::proto::keys::{KdfParams, LicenseKeys, Serial};

/// Overrides the activation file's location (tests, or several users of one account).
pub const ENV_PATH: &str = "LIC_UDP_ACTIVATION";

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("cannot find a home directory for the activation file; set {ENV_PATH}")]
    NoHome,
    #[error("cannot read the activation file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the activation file {path} is damaged ({why}); run `lic-udp activate` again")]
    Corrupt { path: PathBuf, why: String },
    #[error("cannot write the activation file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

#[derive(Clone, Serialize, Deserialize)]
pub struct Activation {
    pub server: String,
    pub serial: String,
    pub server_salt: String,
    pub kdf: KdfParams,
    pub license_id: String,
    pub k_proof: String,
    pub k_auth: String,
}

impl Activation {
    pub fn new(server: &str, serial: &Serial, keys: &CachedKeys) -> Self {
        Self {
            server: server.to_owned(),
            serial: serial.as_str().to_owned(),
            server_salt: hex::encode(keys.server_salt),
            kdf: keys.params,
            license_id: hex::encode(keys.keys.license_id),
            k_proof: hex::encode(keys.keys.k_proof),
            k_auth: hex::encode(keys.keys.k_auth),
        }
    }

    pub fn serial(&self, path: &Path) -> Result<Serial, ActivationError> {
        Serial::parse(&self.serial).map_err(|e| corrupt(path, e.to_string()))
    }

    pub fn cached_keys(&self, path: &Path) -> Result<CachedKeys, ActivationError> {
        fn arr<const N: usize>(path: &Path, field: &str, s: &str) -> Result<[u8; N], ActivationError> {
            let v = hex::decode(s).map_err(|_| corrupt(path, format!("{field} is not hex")))?;
            v.try_into().map_err(|_| corrupt(path, format!("{field} has the wrong length")))
        }
        Ok(CachedKeys {
            serial: self.serial(path)?,
            server_salt: arr(path, "server_salt", &self.server_salt)?,
            params: self.kdf,
            keys: LicenseKeys {
                license_id: arr(path, "license_id", &self.license_id)?,
                k_proof: arr(path, "k_proof", &self.k_proof)?,
                k_auth: arr(path, "k_auth", &self.k_auth)?,
            },
        })
    }
}

fn corrupt(path: &Path, why: String) -> ActivationError {
    ActivationError::Corrupt { path: path.to_path_buf(), why }
}

/// `$LIC_UDP_ACTIVATION`, else `$XDG_CONFIG_HOME/lic-udp/activation.json`, else
/// `~/.config/lic-udp/activation.json`.
pub fn default_path() -> Result<PathBuf, ActivationError> {
    if let Some(p) = std::env::var_os(ENV_PATH) {
        return Ok(PathBuf::from(p));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(x) if !x.is_empty() => PathBuf::from(x),
        _ => PathBuf::from(std::env::var_os("HOME").ok_or(ActivationError::NoHome)?).join(".config"),
    };
    Ok(base.join("lic-udp").join("activation.json"))
}

/// `Ok(None)` when there is no activation yet.
pub fn load(path: &Path) -> Result<Option<Activation>, ActivationError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ActivationError::Read { path: path.to_path_buf(), source }),
    };
    serde_json::from_str(&text).map(Some).map_err(|e| corrupt(path, e.to_string()))
}

/// Writes atomically (temporary file, fsync, rename) with mode 0600: a crash leaves either the
/// old file or the new one, and no other user can read the serial.
pub fn save(path: &Path, a: &Activation) -> Result<(), ActivationError> {
    let werr = |source| ActivationError::Write { path: path.to_path_buf(), source };
    let dir = path.parent().unwrap_or(Path::new("."));
    create_private_dir(dir).map_err(werr)?;
    let tmp = dir.join(format!(".activation.{}.tmp", std::process::id()));
    let json = serde_json::to_vec_pretty(a).map_err(|e| werr(std::io::Error::other(e)))?;
    let mut f = private_file(&tmp).map_err(werr)?;
    f.write_all(&json).and_then(|_| f.sync_all()).map_err(werr)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(werr)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_private_and_atomic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("activation.json");
        assert!(load(&path).expect("missing is fine").is_none());
        let serial = Serial::parse("0123456789").expect("serial");
        let keys = CachedKeys {
            serial: serial.clone(),
            server_salt: [1; 16],
            params: KdfParams::TEST,
            keys: LicenseKeys { license_id: [2; 8], k_proof: [3; 32], k_auth: [4; 32] },
        };
        save(&path, &Activation::new("127.0.0.1:7301", &serial, &keys)).expect("save");
        let a = load(&path).expect("load").expect("present");
        assert_eq!(a.cached_keys(&path).expect("keys"), keys);
        assert_eq!(a.serial(&path).expect("serial"), serial);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        std::fs::write(&path, "{").expect("write");
        assert!(matches!(load(&path), Err(ActivationError::Corrupt { .. })));
    }
}
