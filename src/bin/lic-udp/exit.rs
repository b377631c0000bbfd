//! Exit codes, and the mapping from library errors to them. Scripts depend on these numbers.

use lic_udp::activation::ActivationError;
use lic_udp::config::ConfigError;
use lic_udp::store::StoreError;
use lic_udp::AcquireError;

pub const FULL: i32 = 1;
pub const LICENSE: i32 = 2;
pub const UNREACHABLE: i32 = 3;
pub const USAGE: i32 = 64;
pub const NO_DATA: i32 = 66;
pub const IO: i32 = 74;
pub const CONFIG: i32 = 78;

/// A message for stderr and the exit code that goes with it.
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(USAGE, message)
    }
}

impl From<AcquireError> for Failure {
    fn from(e: AcquireError) -> Self {
        let code = match &e {
            AcquireError::Full { .. } | AcquireError::Busy { .. } | AcquireError::Unavailable { .. } => FULL,
            AcquireError::Revoked
            | AcquireError::Expired
            | AcquireError::UnknownLicense(_)
            | AcquireError::Kdf(_) => LICENSE,
            AcquireError::Unreachable(_) | AcquireError::TimedOut(_) => UNREACHABLE,
            AcquireError::Io { .. } => UNREACHABLE,
        };
        Self::new(code, e.to_string())
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        let code = match &e {
            StoreError::UserExists { .. }
            | StoreError::NoSuchUser { .. }
            | StoreError::WrongPassword { .. }
            | StoreError::LoginThrottled { .. }
            | StoreError::NoSuchLicense { .. }
            | StoreError::NotOwner { .. }
            | StoreError::AlreadyRevoked { .. } => LICENSE,
            StoreError::BadUserName { .. } | StoreError::EmptyPassword | StoreError::BadSeats { .. } => USAGE,
            StoreError::Config(_) => CONFIG,
            StoreError::NoDataDir { .. } => NO_DATA,
            _ => IO,
        };
        Self::new(code, e.to_string())
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Self::new(CONFIG, e.to_string())
    }
}

impl From<ActivationError> for Failure {
    fn from(e: ActivationError) -> Self {
        Self::new(IO, e.to_string())
    }
}
