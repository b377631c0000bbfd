//! Exit codes, and the mapping from library errors to them. Scripts depend on these numbers.

use lic_udp::activation::ActivationError;
use lic_udp::config::ConfigError;
use lic_udp::store::StoreError;
use lic_udp::AcquireError;

pub use lic_udp::exit_code::{CONFIG, FULL, IO, LICENSE, NO_DATA, UNREACHABLE, USAGE};
use lic_udp::locate::LocateError;

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
        Self::new(e.exit_code(), e.to_string())
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
            | StoreError::AlreadyRevoked { .. }
            | StoreError::LastAdmin { .. }
            | StoreError::OwnsLicenses { .. } => LICENSE,
            StoreError::BadUserName { .. }
            | StoreError::ReservedUserName { .. }
            | StoreError::EmptyPassword
            | StoreError::BadSeats { .. } => USAGE,
            StoreError::Config(_) => CONFIG,
            StoreError::NoDataDir { .. } | StoreError::NotADirectory { .. } => NO_DATA,
            // An etcd without quorum, or not there: like a license server that does not answer.
            StoreError::Etcd(inner) if inner.is_unavailable() => UNREACHABLE,
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

impl From<LocateError> for Failure {
    fn from(e: LocateError) -> Self {
        Self::new(e.exit_code(), e.to_string())
    }
}

impl From<ActivationError> for Failure {
    fn from(e: ActivationError) -> Self {
        Self::new(IO, e.to_string())
    }
}
