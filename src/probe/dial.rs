//! Opens one node's connection: name lookup, TCP, TLS, then redis-rs's set-up (AUTH only: no
//! CLIENT SETINFO, see `login`) over the stream made here.
//!
//! Why not redis-rs's own dialing: it builds a new rustls configuration for every connection,
//! reading and parsing the system's whole root bundle each time (blocking file I/O on an async
//! worker), and it races a TCP and TLS handshake to every address a name resolves to. Here the
//! TLS configuration is built once (again only when a TLS file changes) and the addresses are
//! tried one after another.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use redis::AsyncConnectionConfig;
use redis::RedisConnectionInfo;
use redis::aio::MultiplexedConnection;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::Fault;
use super::reason::{Reason, io_error_reason};
use crate::config::{HostPort, TlsConfig};

/// What every dial shares.
pub(super) struct Dialer {
    tls: Option<Tls>,
    dial_timeout: Duration,
    read_timeout: Duration,
}

struct Tls {
    config: Arc<ClientConfig>,
    /// Verified in every node's certificate instead of the name the node is reached by.
    server_name: Option<String>,
}

impl Dialer {
    /// Builds the TLS client configuration once; `Err` names what in the material is unusable.
    pub fn new(
        tls: Option<&TlsConfig>,
        dial_timeout: Duration,
        read_timeout: Duration,
    ) -> Result<Self, String> {
        let tls = match tls {
            Some(t) => Some(Tls {
                config: super::tls::client_config(t)?,
                server_name: t.server_name.clone(),
            }),
            None => None,
        };
        Ok(Dialer {
            tls,
            dial_timeout,
            read_timeout,
        })
    }

    /// Connects to `addr` and authenticates with `redis`. The connection's I/O runs on a task
    /// of its own, which ends when the last clone of the connection is dropped.
    pub async fn dial(
        &self,
        addr: &HostPort,
        redis: &RedisConnectionInfo,
    ) -> Result<MultiplexedConnection, Fault> {
        let addrs = super::resolve(addr).await.map_err(|e| Fault {
            reason: Reason::Dns,
            detail: format!("name lookup failed: {e}"),
        })?;
        let tcp = self.connect_first(&addrs).await?;
        let config = AsyncConnectionConfig::new().set_response_timeout(Some(self.read_timeout));
        let setup = async {
            match &self.tls {
                Some(tls) => {
                    let name = tls.server_name.as_deref().unwrap_or(&addr.host);
                    let name = ServerName::try_from(name.to_string()).map_err(|e| Fault {
                        reason: Reason::Tls,
                        detail: format!("server name {name}: {e}"),
                    })?;
                    let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
                        .connect(name, tcp)
                        .await
                        .map_err(Fault::io)?;
                    let (conn, driver) =
                        MultiplexedConnection::new_with_config(redis, stream, config)
                            .await
                            .map_err(Fault::redis)?;
                    tokio::spawn(driver);
                    Ok(conn)
                }
                None => {
                    let (conn, driver) = MultiplexedConnection::new_with_config(redis, tcp, config)
                        .await
                        .map_err(Fault::redis)?;
                    tokio::spawn(driver);
                    Ok(conn)
                }
            }
        };
        let dialed = timeout(self.dial_timeout, setup)
            .await
            .unwrap_or_else(|_| Err(Fault::timeout()));
        match dialed {
            Err(f) if f.reason == Reason::Auth && self.at_maxclients(addr, &addrs).await => {
                Err(Fault {
                    reason: Reason::MaxClients,
                    detail: "the node refuses new clients: max number of clients reached".into(),
                })
            }
            other => other,
        }
    }

    /// Whether the node turns new clients away at maxclients. redis-rs reports any error reply
    /// to AUTH as a failed authentication, and a node at maxclients answers a new connection's
    /// first command with `-ERR max number of clients reached` and closes it: so after an AUTH
    /// failure one more connection sends a bare PING and reads what the node says first.
    async fn at_maxclients(&self, addr: &HostPort, addrs: &[SocketAddr]) -> bool {
        let Ok(tcp) = self.connect_first(addrs).await else {
            return false;
        };
        let said = async {
            match &self.tls {
                Some(tls) => {
                    let name = tls.server_name.as_deref().unwrap_or(&addr.host);
                    let name = ServerName::try_from(name.to_string()).ok()?;
                    let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
                        .connect(name, tcp)
                        .await
                        .ok()?;
                    first_reply(stream).await
                }
                None => first_reply(tcp).await,
            }
        };
        timeout(self.dial_timeout, said)
            .await
            .ok()
            .flatten()
            .is_some_and(|r| r.to_ascii_lowercase().contains("max number of clients"))
    }

    /// The first of `addrs` that accepts, each given the dial timeout.
    async fn connect_first(&self, addrs: &[SocketAddr]) -> Result<TcpStream, Fault> {
        let mut last = Fault {
            reason: Reason::Dns,
            detail: "the name resolved to no address".into(),
        };
        for a in addrs {
            match timeout(self.dial_timeout, TcpStream::connect(a)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Ok(Err(e)) => last = Fault::io(e),
                Err(_) => last = Fault::timeout(),
            }
        }
        Err(last)
    }
}

/// Sends a bare PING and reads the first reply (at most 256 bytes).
async fn first_reply<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> Option<String> {
    s.write_all(b"PING\r\n").await.ok()?;
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).await.ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

impl Fault {
    fn io(e: std::io::Error) -> Self {
        Fault {
            reason: io_error_reason(&e),
            detail: e.to_string(),
        }
    }
}
