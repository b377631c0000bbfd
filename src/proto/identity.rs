//! Who holds a seat: the user, host, program and version a client states in a PROOF_ID
//! (proto-spec.md §2), under the PROOF's MAC, so that `status`, the dashboard and the audit log
//! can say `alice@ws12 (cad 2.1)` instead of an address.
//!
//! The fields are fixed-width on the wire, as every field of the protocol is: each is UTF-8,
//! zero-padded, with no NUL or control character inside. What a client states is a claim, not
//! a proof (anyone with the serial can claim any name); it is bound to the session so that
//! nobody *without* the serial can change it.

use serde::{Deserialize, Serialize};

/// Bytes of each field on the wire, in order.
pub const USER_LEN: usize = 32;
pub const HOST_LEN: usize = 64;
pub const PROGRAM_LEN: usize = 32;
pub const VERSION_LEN: usize = 16;
/// The identity block of a PROOF_ID.
pub const WIRE_LEN: usize = USER_LEN + HOST_LEN + PROGRAM_LEN + VERSION_LEN;

const FIELDS: [(&str, usize); 4] = [
    ("user name", USER_LEN),
    ("host name", HOST_LEN),
    ("program name", PROGRAM_LEN),
    ("program version", VERSION_LEN),
];

/// A holder's stated identity. Empty fields are allowed (not known).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    pub user: String,
    pub host: String,
    pub program: String,
    pub version: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the {field} `{value}` is {len} bytes long; at most {max} fit")]
    TooLong { field: &'static str, value: String, len: usize, max: usize },
    #[error("the {field} contains a control character; use printable text")]
    Control { field: &'static str },
}

impl Identity {
    /// Checks each field as the server will: refuses rather than cuts, so that what a program
    /// asked for is what admins see.
    pub fn new(user: &str, host: &str, program: &str, version: &str) -> Result<Self, IdentityError> {
        let values = [user, host, program, version];
        for ((field, max), value) in FIELDS.iter().zip(values) {
            if value.len() > *max {
                return Err(IdentityError::TooLong {
                    field,
                    value: value.to_owned(),
                    len: value.len(),
                    max: *max,
                });
            }
            if value.chars().any(char::is_control) {
                return Err(IdentityError::Control { field });
            }
        }
        Ok(Self { user: user.into(), host: host.into(), program: program.into(), version: version.into() })
    }

    /// This process as the OS names it: `$USER` (or `$LOGNAME`), the host name, the executable's
    /// file name, and `version` (empty if not known). Each is cut to fit at a character
    /// boundary and stripped of control characters, since nobody typed these.
    pub fn of_this_process(program: Option<&str>, version: &str) -> Self {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()
            .filter(|u| !u.is_empty())
            .or_else(user_of_this_uid)
            .unwrap_or_default();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let exe = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        let program = program.map(str::to_owned).or(exe).unwrap_or_default();
        Self {
            user: fit(&user, USER_LEN),
            host: fit(host.trim(), HOST_LEN),
            program: fit(&program, PROGRAM_LEN),
            version: fit(version, VERSION_LEN),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.user.is_empty() && self.host.is_empty() && self.program.is_empty() && self.version.is_empty()
    }

    /// The identity block of a PROOF_ID. Fields that were not checked by [`new`](Self::new) are
    /// cut to fit, as [`fit`] does.
    pub fn to_wire(&self) -> [u8; WIRE_LEN] {
        let mut out = [0u8; WIRE_LEN];
        let mut at = 0;
        for ((_, max), value) in FIELDS.iter().zip([&self.user, &self.host, &self.program, &self.version]) {
            let v = fit(value, *max);
            out[at..at + v.len()].copy_from_slice(v.as_bytes());
            at += max;
        }
        out
    }

    /// Reads an identity block: `None` unless every field is UTF-8 without control characters
    /// and zero after its end (so that one identity has one encoding).
    pub fn from_wire(b: &[u8; WIRE_LEN]) -> Option<Self> {
        let mut values = Vec::with_capacity(4);
        let mut at = 0;
        for (_, max) in FIELDS {
            let field = &b[at..at + max];
            at += max;
            let len = field.iter().position(|&x| x == 0).unwrap_or(max);
            if field[len..].iter().any(|&x| x != 0) {
                return None;
            }
            let s = std::str::from_utf8(&field[..len]).ok()?;
            if s.chars().any(char::is_control) {
                return None;
            }
            values.push(s.to_owned());
        }
        let mut it = values.into_iter();
        Some(Self {
            user: it.next().unwrap_or_default(),
            host: it.next().unwrap_or_default(),
            program: it.next().unwrap_or_default(),
            version: it.next().unwrap_or_default(),
        })
    }
}

/// `user@host (program version)`, leaving out what is empty.
impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.user.is_empty(), self.host.is_empty()) {
            (false, false) => write!(f, "{}@{}", self.user, self.host)?,
            (false, true) => f.write_str(&self.user)?,
            (true, false) => write!(f, "@{}", self.host)?,
            (true, true) => f.write_str("?")?,
        }
        match (self.program.is_empty(), self.version.is_empty()) {
            (false, false) => write!(f, " ({} {})", self.program, self.version),
            (false, true) => write!(f, " ({})", self.program),
            (true, false) => write!(f, " (version {})", self.version),
            (true, true) => Ok(()),
        }
    }
}

/// The name of this process's real uid in `/etc/passwd`: services and cron jobs often run
/// without `$USER`. Only local accounts are found (no NSS); `None` otherwise.
fn user_of_this_uid() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.to_owned();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)? == uid).then(|| name.to_owned())
    })
}

/// `s` without control characters, cut at a character boundary to at most `max` bytes.
fn fit(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_round_trips_and_has_one_encoding() {
        let id = Identity::new("alice", "ws12.lab", "cad", "2.1").expect("valid");
        let w = id.to_wire();
        assert_eq!(Identity::from_wire(&w), Some(id.clone()));
        assert_eq!(id.to_string(), "alice@ws12.lab (cad 2.1)");
        // A byte after a field's end is another encoding of the same text: refused.
        let mut bad = w;
        bad[10] = b'x';
        assert_eq!(Identity::from_wire(&bad), None);
        assert_eq!(Identity::from_wire(&[0; WIRE_LEN]), Some(Identity::default()));
        assert_eq!(Identity::default().to_string(), "?");
    }

    #[test]
    fn too_long_control_characters_and_bad_utf8_are_refused() {
        let long = "x".repeat(USER_LEN + 1);
        assert!(matches!(
            Identity::new(&long, "", "", ""),
            Err(IdentityError::TooLong { max: USER_LEN, .. })
        ));
        assert!(matches!(Identity::new("a\nb", "", "", ""), Err(IdentityError::Control { .. })));
        // 32 bytes of 2-byte characters fit exactly; one more does not.
        assert!(Identity::new(&"é".repeat(16), "", "", "").is_ok());
        assert!(Identity::new(&"é".repeat(17), "", "", "").is_err());
        let mut w = [0u8; WIRE_LEN];
        w[0] = 0xff;
        assert_eq!(Identity::from_wire(&w), None, "not UTF-8");
        w[0] = 0x07;
        assert_eq!(Identity::from_wire(&w), None, "a control character");
    }

    #[test]
    fn what_the_os_says_is_cut_to_fit_at_a_character_boundary() {
        assert_eq!(fit(&"é".repeat(20), USER_LEN).len(), 32);
        assert_eq!(fit("ab\u{1b}[31mc", 16), "ab[31mc");
        let me = Identity::of_this_process(Some("prog"), "1.0");
        assert_eq!((me.program.as_str(), me.version.as_str()), ("prog", "1.0"));
        // Whoever runs the tests has a name, from $USER or from /etc/passwd.
        assert!(!me.user.is_empty() || user_of_this_uid().is_none(), "{me:?}");
        assert!(Identity::from_wire(&me.to_wire()).is_some());
    }
}
