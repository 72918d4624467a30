//! The closed set of reasons a check or a node can fail for, used as metric labels.
//!
//! Raw error strings never become labels: they are unbounded, may change between versions, and
//! could carry addresses or secrets.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::sync::Arc;

use redis::{ErrorKind, RedisError, ServerErrorKind};

/// Why a check or a node failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The peer answered with a TCP RST ("connection reset by peer").
    ConnectionReset,
    /// The connection was closed (EOF, broken pipe), e.g. by `CLIENT KILL` or an idle timeout.
    ConnectionClosed,
    /// Nothing listens on the node's port.
    ConnectionRefused,
    /// No answer within the attempt timeout (or the dial/read timeout).
    Timeout,
    /// Wrong or missing password (`WRONGPASS`, `NOAUTH`).
    Auth,
    /// The ACL user may not run a command the probe sends (`NOPERM`).
    Permission,
    /// TLS handshake failed: unknown CA, name mismatch, expired certificate, plain-text server.
    Tls,
    /// The node's host name does not resolve.
    Dns,
    /// The cluster reports `cluster_state:fail` or answers `CLUSTERDOWN`.
    ClusterDown,
    /// The node is loading its dataset.
    Loading,
    /// A shard that holds slots has no primary that answers.
    NoPrimary,
    /// Cluster mode disabled: the node is a replica (`role:slave`), so the app's writes fail.
    NotPrimary,
    /// `REDIS_CLUSTER_MODE=true` against a server without cluster support.
    ClusterModeDisabled,
    /// The address is a Sentinel, not a Redis server.
    Sentinel,
    /// The node refused a new connection: it has `maxclients` clients already (it says so to a
    /// plain-text client; a TLS node drops the client before the handshake, which reads as
    /// `connection_closed` and is tied to the node's `rejected_connections` by `diagnose`).
    MaxClients,
    /// Anything else (the log line has the detail).
    Other,
}

impl Reason {
    pub const ALL: [Reason; 16] = [
        Reason::ConnectionReset,
        Reason::ConnectionClosed,
        Reason::ConnectionRefused,
        Reason::Timeout,
        Reason::Auth,
        Reason::Permission,
        Reason::Tls,
        Reason::Dns,
        Reason::ClusterDown,
        Reason::Loading,
        Reason::NoPrimary,
        Reason::NotPrimary,
        Reason::ClusterModeDisabled,
        Reason::Sentinel,
        Reason::MaxClients,
        Reason::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ConnectionReset => "connection_reset",
            Reason::ConnectionClosed => "connection_closed",
            Reason::ConnectionRefused => "connection_refused",
            Reason::Timeout => "timeout",
            Reason::Auth => "auth",
            Reason::Permission => "permission",
            Reason::Tls => "tls",
            Reason::Dns => "dns",
            Reason::ClusterDown => "cluster_down",
            Reason::Loading => "loading",
            Reason::NoPrimary => "no_primary",
            Reason::NotPrimary => "not_primary",
            Reason::ClusterModeDisabled => "cluster_mode_disabled",
            Reason::Sentinel => "sentinel",
            Reason::MaxClients => "max_clients",
            Reason::Other => "other",
        }
    }

    /// Classifies a redis-rs error.
    pub fn of(e: &RedisError) -> Reason {
        // Refused at maxclients: the server answers a new connection's first command with this
        // error and closes. (When that command is AUTH, redis-rs keeps only "authentication
        // failed": the dial tells the two apart, see `dial::Dialer::at_maxclients`.)
        if e.to_string()
            .to_ascii_lowercase()
            .contains("max number of clients")
        {
            return Reason::MaxClients;
        }
        match e.kind() {
            ErrorKind::AuthenticationFailed => return Reason::Auth,
            ErrorKind::Server(ServerErrorKind::ClusterDown) => return Reason::ClusterDown,
            ErrorKind::Server(ServerErrorKind::MasterDown) => return Reason::ClusterDown,
            ErrorKind::Server(ServerErrorKind::BusyLoading) => return Reason::Loading,
            ErrorKind::Server(ServerErrorKind::NoPerm) => return Reason::Permission,
            _ => {}
        }
        match e.code() {
            Some("NOAUTH" | "WRONGPASS") => return Reason::Auth,
            Some("NOPERM") => return Reason::Permission,
            Some("CLUSTERDOWN" | "MASTERDOWN") => return Reason::ClusterDown,
            Some("LOADING") => return Reason::Loading,
            _ => {}
        }
        if let Some(r) = io_reason(e) {
            return r;
        }
        from_text(&e.to_string())
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Marks a failed name lookup inside an `io::Error`, so it classifies as [`Reason::Dns`].
#[derive(Debug)]
pub struct DnsError(pub io::Error);

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "name lookup failed: {}", self.0)
    }
}

impl StdError for DnsError {}

/// Finds the `io::Error` inside a redis-rs error. redis-rs stores it as an
/// `Arc<dyn Error + Send + Sync>`, which `source()` hands out as the `Arc` itself, so a plain
/// downcast never reaches it.
fn io_reason(e: &RedisError) -> Option<Reason> {
    let mut cur: Option<&(dyn StdError + 'static)> = e.source();
    while let Some(err) = cur {
        let io = err.downcast_ref::<io::Error>().or_else(|| {
            err.downcast_ref::<Arc<dyn StdError + Send + Sync>>()
                .and_then(|a| (**a).downcast_ref::<io::Error>())
        });
        if let Some(io) = io {
            return Some(io_error_reason(io));
        }
        if err.downcast_ref::<rustls::Error>().is_some() {
            return Some(Reason::Tls);
        }
        cur = err.source();
    }
    None
}

/// Classifies an `io::Error`, looking inside it for a TLS or DNS error first.
pub fn io_error_reason(io: &io::Error) -> Reason {
    if let Some(inner) = io.get_ref() {
        if inner.is::<rustls::Error>() {
            return Reason::Tls;
        }
        if inner.is::<DnsError>() {
            return Reason::Dns;
        }
    }
    match io.kind() {
        io::ErrorKind::ConnectionReset => Reason::ConnectionReset,
        io::ErrorKind::ConnectionRefused => Reason::ConnectionRefused,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Reason::Timeout,
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::NotConnected => Reason::ConnectionClosed,
        _ => from_text(&io.to_string()),
    }
}

/// Last resort for errors that redis-rs re-wraps as text.
fn from_text(s: &str) -> Reason {
    let s = s.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| s.contains(n));
    if has(&["max number of clients"]) {
        Reason::MaxClients
    } else if has(&["noperm", "no permissions to run"]) {
        Reason::Permission
    } else if has(&["cluster support disabled", "cluster mode is not enabled"]) {
        Reason::ClusterModeDisabled
    } else if has(&["wrongpass", "noauth", "authentication", "invalid password"]) {
        Reason::Auth
    } else if has(&[
        "certificate",
        "tls",
        "handshake",
        "unknownissuer",
        "invalid peer",
    ]) {
        Reason::Tls
    } else if has(&[
        "name lookup",
        "failed to lookup",
        "name or service not known",
        "no such host",
    ]) {
        Reason::Dns
    } else if has(&["connection reset"]) {
        Reason::ConnectionReset
    } else if has(&["connection refused"]) {
        Reason::ConnectionRefused
    } else if has(&["timed out", "timeout"]) {
        Reason::Timeout
    } else if has(&["clusterdown", "cluster is down"]) {
        Reason::ClusterDown
    } else if has(&["loading"]) {
        Reason::Loading
    } else if has(&[
        "broken pipe",
        "closed",
        "eof",
        "connection aborted",
        "dropped",
    ]) {
        Reason::ConnectionClosed
    } else {
        Reason::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: io::ErrorKind) -> RedisError {
        RedisError::from(io::Error::from(kind))
    }

    #[test]
    fn io_kinds() {
        assert_eq!(
            Reason::of(&io(io::ErrorKind::ConnectionReset)),
            Reason::ConnectionReset
        );
        assert_eq!(
            Reason::of(&io(io::ErrorKind::ConnectionRefused)),
            Reason::ConnectionRefused
        );
        assert_eq!(Reason::of(&io(io::ErrorKind::TimedOut)), Reason::Timeout);
        assert_eq!(
            Reason::of(&io(io::ErrorKind::BrokenPipe)),
            Reason::ConnectionClosed
        );
        assert_eq!(
            Reason::of(&io(io::ErrorKind::UnexpectedEof)),
            Reason::ConnectionClosed
        );
    }

    #[test]
    fn tls_and_dns_inside_io() {
        let tls = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(Reason::of(&RedisError::from(tls)), Reason::Tls);
        let dns = io::Error::other(DnsError(io::Error::other("no such host")));
        assert_eq!(Reason::of(&RedisError::from(dns)), Reason::Dns);
    }

    #[test]
    fn server_codes() {
        let e = redis::make_extension_error(
            "WRONGPASS".into(),
            Some("invalid username-password pair".into()),
        );
        assert_eq!(Reason::of(&e), Reason::Auth);
        let e =
            redis::make_extension_error("NOAUTH".into(), Some("Authentication required.".into()));
        assert_eq!(Reason::of(&e), Reason::Auth);
        let e = redis::make_extension_error(
            "NOPERM".into(),
            Some("User probe has no permissions to run the 'cluster|shards' command".into()),
        );
        assert_eq!(Reason::of(&e), Reason::Permission);
    }

    #[test]
    fn cluster_support_disabled() {
        assert_eq!(
            from_text("ERR This instance has cluster support disabled"),
            Reason::ClusterModeDisabled
        );
    }

    #[test]
    fn text_fallback() {
        assert_eq!(
            from_text("Connection reset by peer (os error 104)"),
            Reason::ConnectionReset
        );
        assert_eq!(
            from_text("invalid peer certificate: UnknownIssuer"),
            Reason::Tls
        );
        assert_eq!(from_text("something odd"), Reason::Other);
        for cluster in ["", " + cluster connections"] {
            assert_eq!(
                from_text(&format!("ERR max number of clients{cluster} reached")),
                Reason::MaxClients
            );
        }
    }

    #[test]
    fn labels_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.as_str()));
            assert!(
                r.as_str()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_')
            );
        }
    }
}
