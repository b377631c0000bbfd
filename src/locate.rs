//! Which serial and which servers a client uses when its caller leaves them out. `verify`, `run`
//! and the C and Python libraries all go through here, so that the README's one rule ("`--server`,
//! `$LIC_UDP_SERVER`, the activated server, `127.0.0.1:7301`") is true of every way in.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use crate::activation::{self, ActivationError};
use crate::exit_code;
use crate::proto::keys::{Serial, SerialError};
use crate::server::DEFAULT_PORT;
use crate::Client;

/// Environment variable naming the default license server.
pub const ENV_SERVER: &str = "LIC_UDP_SERVER";

/// Why no client could be set up. [`LocateError::exit_code`] gives the CLI's exit code.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("`{0}` is not a server address: use HOST, HOST:PORT, IP, IP:PORT or [IPv6]:PORT")]
    Malformed(String),
    #[error("cannot resolve the server name `{host}` ({why}); check the name and this host's DNS")]
    Unresolved { host: String, why: String },
    #[error("`{0}` names no server (use HOST[:PORT][,HOST[:PORT]…])")]
    NoServer(String),
    #[error(transparent)]
    Serial(#[from] SerialError),
    #[error("no serial: pass --serial, or run `lic-udp activate --serial SERIAL` once")]
    NoSerial,
    #[error(transparent)]
    Activation(#[from] ActivationError),
}

impl LocateError {
    /// A value that cannot name a server is a usage error (64); a well-formed name that does not
    /// resolve is 3, like a server that does not answer: the DNS may be down for now, and a
    /// script that retries on 3 should retry this too.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Malformed(_) | Self::NoServer(_) | Self::Serial(_) | Self::NoSerial => exit_code::USAGE,
            Self::Unresolved { .. } => exit_code::UNREACHABLE,
            Self::Activation(_) => exit_code::IO,
        }
    }
}

/// A client ready to acquire `serial`, with the activation file's keys when they are this
/// serial's.
pub struct Located {
    pub client: Client,
    pub serial: Serial,
    /// An unreadable activation file that did not matter because a serial was given; the
    /// caller may say so.
    pub ignored_activation: Option<ActivationError>,
}

/// Serial and servers from the arguments, then `$LIC_UDP_SERVER`, then the activation file,
/// then `127.0.0.1:7301`.
pub fn locate(serial: Option<&str>, servers: Option<&str>) -> Result<Located, LocateError> {
    let path = activation::default_path()?;
    let mut ignored_activation = None;
    let act = match activation::load(&path) {
        Ok(a) => a,
        // Only needed when no serial was given.
        Err(e) if serial.is_some() => {
            ignored_activation = Some(e);
            None
        }
        Err(e) => return Err(e.into()),
    };
    let server_text = servers
        .map(str::to_owned)
        .or_else(|| std::env::var(ENV_SERVER).ok().filter(|s| !s.is_empty()))
        .or_else(|| act.as_ref().map(|a| a.server.clone()))
        .unwrap_or_else(|| format!("127.0.0.1:{DEFAULT_PORT}"));
    let list = resolve_list(&server_text)?;
    let serial = match (serial, &act) {
        (Some(s), _) => Serial::parse(s)?,
        (None, Some(a)) => a.serial(&path)?,
        (None, None) => return Err(LocateError::NoSerial),
    };
    let mut client = Client::new(list[0]).with_servers(list);
    if let Some(a) = &act {
        if a.serial(&path).ok().as_ref() == Some(&serial) {
            client = client.with_cached_keys(a.cached_keys(&path)?);
        }
    }
    Ok(Located { client, serial, ignored_activation })
}

/// `HOST`, `HOST:PORT`, `IP`, `IP:PORT` or `[IPv6]:PORT`; the port defaults to 7301.
pub fn resolve(server: &str) -> Result<SocketAddr, LocateError> {
    resolve_with(server, |host, port| (host, port).to_socket_addrs().map(Iterator::collect))
}

/// `A,B,C`: the nodes of one cluster, each as [`resolve`] takes it, tried in this order.
pub fn resolve_list(servers: &str) -> Result<Vec<SocketAddr>, LocateError> {
    let list: Vec<SocketAddr> =
        servers.split(',').map(str::trim).filter(|s| !s.is_empty()).map(resolve).collect::<Result<_, _>>()?;
    if list.is_empty() {
        return Err(LocateError::NoServer(servers.to_owned()));
    }
    Ok(list)
}

/// [`resolve`] with the DNS lookup passed in, so tests need no resolver.
fn resolve_with(
    server: &str,
    lookup: impl FnOnce(&str, u16) -> std::io::Result<Vec<SocketAddr>>,
) -> Result<SocketAddr, LocateError> {
    if let Ok(a) = server.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = server.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    let malformed = || LocateError::Malformed(server.to_owned());
    let (host, port) = match server.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| malformed())?),
        None => (server, DEFAULT_PORT),
    };
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if host.len() > 253 || !host.trim_end_matches('.').split('.').all(label_ok) {
        return Err(malformed());
    }
    let unresolved = |why: String| LocateError::Unresolved { host: host.to_owned(), why };
    let addrs = lookup(host, port).map_err(|e| unresolved(e.to_string()))?;
    addrs.into_iter().next().ok_or_else(|| unresolved("no addresses".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_dns(_: &str, _: u16) -> std::io::Result<Vec<SocketAddr>> {
        Err(std::io::Error::other("failed to lookup address information: Name or service not known"))
    }

    #[test]
    fn a_name_that_does_not_resolve_is_unreachable_and_a_malformed_one_is_usage() {
        let e = resolve_with("license.example.lan", no_dns).expect_err("no dns");
        assert_eq!(e.exit_code(), exit_code::UNREACHABLE, "{e}");
        assert!(e.to_string().contains("license.example.lan"), "{e}");
        for bad in ["", "host:notaport", "bad host", "a..b", "host:70000"] {
            let e = resolve_with(bad, |_, _| panic!("{bad:?} was looked up")).expect_err(bad);
            assert_eq!(e.exit_code(), exit_code::USAGE, "{bad:?}: {e}");
        }
        let ok = resolve_with("server.lan:7400", |h, p| {
            assert_eq!((h, p), ("server.lan", 7400));
            Ok(vec![SocketAddr::from(([10, 0, 0, 7], p))])
        });
        assert_eq!(ok.ok(), Some(SocketAddr::from(([10, 0, 0, 7], 7400))));
        assert_eq!(
            resolve_with("10.1.2.3", no_dns).ok(),
            Some(SocketAddr::from(([10, 1, 2, 3], DEFAULT_PORT)))
        );
        assert_eq!(resolve_list(" , ").err().map(|e| e.exit_code()), Some(exit_code::USAGE));
    }
}
