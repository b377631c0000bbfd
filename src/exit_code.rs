//! The CLI's exit codes, which the C library returns too, so that scripts and C programs read
//! one table (README, "Exit codes").

use crate::AcquireError;

pub const OK: i32 = 0;
pub const FULL: i32 = 1;
pub const LICENSE: i32 = 2;
pub const UNREACHABLE: i32 = 3;
pub const USAGE: i32 = 64;
pub const NO_DATA: i32 = 66;
pub const IO: i32 = 74;
pub const CONFIG: i32 = 78;

impl AcquireError {
    /// Busy and unavailable servers count as full: both mean "try again later".
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Full { .. } | Self::Busy { .. } | Self::Unavailable { .. } => FULL,
            Self::Revoked | Self::Expired | Self::UnknownLicense(_) | Self::Kdf(_) => LICENSE,
            Self::Unreachable(_) | Self::TimedOut(_) | Self::Io { .. } => UNREACHABLE,
        }
    }
}
