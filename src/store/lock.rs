//! One server per data dir. Two servers on the same store would each count seats on their own
//! and hand out the same seats twice, so `serve` holds an exclusive `flock` on
//! `<data dir>/serve.lock` for as long as it runs.
//!
//! `flock`, on a file of its own: SQLite's locks are `fcntl` locks on the database files, and
//! touching those files through another handle would drop them (see [`Store::another`]).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use super::{io_err, Store, StoreError};

pub const LOCK_FILE: &str = "serve.lock";

/// Held while a server runs; the lock goes with it (also when the process dies).
pub struct ServeLock {
    _file: Flock<File>,
}

impl std::fmt::Debug for ServeLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServeLock")
    }
}

impl Store {
    /// Takes the data dir's server lock, or says which process holds it.
    pub fn lock_for_serving(&self) -> Result<ServeLock, StoreError> {
        lock_dir(&self.dir)
    }
}

/// Whether a running `lic-udp serve` holds `dir`'s lock, for the admin commands' warning about
/// a data dir no server reads. It tries a shared lock and lets it go at once: a server starting
/// in that instant would be refused once, which is rarer and milder than the stray data dir
/// this warns about. Never creates the lock file; a dir without one has never been served.
pub fn is_served(dir: &Path) -> bool {
    let Ok(file) = std::fs::OpenOptions::new().read(true).open(dir.join(LOCK_FILE)) else {
        return false;
    };
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_unlocked_on_drop) => false,
        Err((_, errno)) => errno == nix::errno::Errno::EWOULDBLOCK,
    }
}

fn lock_dir(dir: &Path) -> Result<ServeLock, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io_err(&path))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut locked) => {
            // The pid is only for the message another server prints.
            let pid = std::process::id().to_string();
            let _ = locked.set_len(0);
            let _ = locked.rewind();
            let _ = locked.write_all(pid.as_bytes());
            let _ = locked.sync_data();
            Ok(ServeLock { _file: locked })
        }
        Err((mut file, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            Err(StoreError::InUse { dir: dir.to_owned(), pid: pid.trim().parse().ok() })
        }
        Err((_, errno)) => Err(StoreError::Io { path, source: std::io::Error::from(errno) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_is_refused_until_the_first_goes() {
        let d = tempfile::tempdir().expect("tempdir");
        let first = lock_dir(d.path()).expect("first lock");
        match lock_dir(d.path()) {
            Err(StoreError::InUse { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected InUse, got {other:?}"),
        }
        assert!(is_served(d.path()));
        drop(first);
        assert!(!is_served(d.path()));
        lock_dir(d.path()).expect("free again once the first server is gone");
    }
}
