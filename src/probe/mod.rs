//! The only code that talks to Redis.
//!
//! [`RedisProbe`] keeps exactly one multiplexed connection per cluster node (TLS and AUTH
//! included) and, on each [`RedisProbe::check`]:
//! 1. PINGs every known node concurrently, each bounded by the attempt deadline, so one frozen
//!    node costs one timeout and does not delay the others' results;
//! 2. asks one node that answered for the topology (`CLUSTER SHARDS`, or `CLUSTER SLOTS` on
//!    servers without it, pipelined with `CLUSTER INFO`), so failovers and new nodes are
//!    followed within one check, and PINGs any node it adds. The node asked moves on every
//!    attempt, so a fleet of sidecars spreads these reads over the cluster; the configured
//!    seed addresses are asked only when no known node answers.
//!
//! The check passes when every shard that holds slots has a primary that answered. A replica
//! that fails is reported but does not fail the check. With cluster mode disabled the one
//! server must also say `role:master` in `INFO replication`.
//!
//! Commands the ACL user may not run (`NOPERM`, reason `permission`) keep the connection and
//! are logged once each: without `CLUSTER SHARDS` the topology comes from `CLUSTER SLOTS`;
//! only a refused PING fails a node.
//!
//! Why not redis-rs's cluster connection: it would open a second connection to every primary
//! for nothing a per-node connection cannot do, and a PING routed through it to a healthy node
//! was seen to wait the full timeout while another node was unreachable. With per-node
//! connections, each pod adds exactly one connection per node.
//!
//! Connections are opened by [`dial`] (one TLS configuration for every dial), dropped on I/O
//! errors and timeouts and re-established on the next attempt.
//! With `REDIS_PASSWORD_FILE`, an AUTH failure re-reads the file; a changed token drops every
//! connection so the next attempt authenticates with it.

mod dial;
pub mod info;
pub mod material;
pub mod reason;
pub mod tls;
pub mod topology;
mod view;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use redis::{RedisConnectionInfo, RedisError, Value};
use tokio::time::{Instant, timeout_at};

use self::dial::Dialer;
use self::material::Watched;
pub use self::reason::Reason;
pub use self::topology::{Role, Topology};
pub use self::view::identity;
use crate::config::parse::{CertFile, KeyFile, Parser};
use crate::config::{HostPort, PasswordSource, RedisConfig, Secret, TlsConfig, read_password_file};

/// What one node did in one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeReport {
    pub addr: HostPort,
    pub role: Role,
    /// PING round trip, or why it failed.
    pub result: Result<Duration, Reason>,
}

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    pub result: Result<(), Reason>,
    pub nodes: Vec<NodeReport>,
    /// One line of detail for logs when the check failed: never the password, never a label.
    pub detail: Option<String>,
    /// What the attempt cost Redis.
    pub cost: Cost,
}

/// Work an attempt caused on the Redis side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cost {
    /// Connections the probe tried to open (each a TCP connect, TLS handshake and AUTH when the
    /// node is up).
    pub dials: u32,
    /// Commands sent over open connections (PING, CLUSTER SHARDS, CLUSTER INFO).
    pub commands: u32,
    /// Connections held open after the attempt.
    pub held: u32,
}

impl CheckReport {
    pub fn passed() -> Self {
        CheckReport {
            result: Ok(()),
            nodes: vec![],
            detail: None,
            cost: Cost::default(),
        }
    }

    pub fn failed(reason: Reason, detail: impl Into<String>) -> Self {
        CheckReport {
            result: Err(reason),
            nodes: vec![],
            detail: Some(detail.into()),
            cost: Cost::default(),
        }
    }
}

/// Anything that can run one check attempt. The health loop is generic over it so its tests
/// can script results on paused time.
pub trait Probe: Send + 'static {
    /// Runs one attempt; must return by `deadline`.
    fn check(&mut self, deadline: Instant) -> impl Future<Output = CheckReport> + Send;

    /// Reads the server-side view (INFO, CLUSTER INFO); must return by `deadline`.
    fn info(&mut self, _deadline: Instant) -> impl Future<Output = Option<InfoReport>> + Send {
        async { None }
    }
}

/// What one node's `INFO` said.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub addr: HostPort,
    pub role: Role,
    pub info: info::NodeInfo,
}

/// The server-side view of the cluster, read on a slower cadence than PING.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InfoReport {
    /// Nodes that answered `INFO`.
    pub nodes: Vec<NodeView>,
    /// `CLUSTER INFO` as read with the last check's topology (cluster mode only).
    pub cluster: Option<info::ClusterInfo>,
    /// Shards in the topology (with slots), as this probe sees them.
    pub shards: usize,
    /// Lines of INFO-style replies that did not parse.
    pub parse_errors: u32,
    /// Nodes whose INFO failed, and why.
    pub failures: Vec<(HostPort, Reason)>,
    pub cost: Cost,
}

/// Which TLS file a [`Watched`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsPart {
    Ca,
    Cert,
    Key,
}

/// Connection settings shared by every node.
struct Settings {
    cluster_mode: bool,
    seeds: Vec<HostPort>,
    username: Option<String>,
    password: PasswordSource,
    tls: Option<TlsConfig>,
    dial_timeout: Duration,
    read_timeout: Duration,
    /// Most nodes followed (`PROBE_MAX_NODES`); the rest are dropped with a log line.
    max_nodes: usize,
}

impl Settings {
    fn from_config(config: &RedisConfig) -> Self {
        Settings {
            cluster_mode: config.cluster_mode,
            seeds: config.addresses.clone(),
            username: config.username.clone(),
            password: config.password.clone(),
            tls: config.tls.clone(),
            dial_timeout: config.dial_timeout,
            read_timeout: config.read_timeout,
            max_nodes: config.max_nodes,
        }
    }

    fn dialer(&self) -> Result<Dialer, String> {
        Dialer::new(self.tls.as_ref(), self.dial_timeout, self.read_timeout)
    }
}

/// Probes a Redis Cluster (or one standalone server) over one connection per node.
pub struct RedisProbe {
    settings: Settings,
    /// Opens connections with the TLS configuration built from `settings`.
    dialer: Dialer,
    /// The password in use; re-read from the file when it changes and after an AUTH failure.
    password: Option<Secret>,
    /// `REDIS_PASSWORD_FILE`, watched for changes.
    password_file: Option<Watched>,
    /// The TLS files (CA, client certificate, client key), watched for changes.
    tls_files: Vec<(TlsPart, Watched)>,
    conns: HashMap<HostPort, MultiplexedConnection>,
    topology: Option<Topology>,
    /// Set when a server rejected `CLUSTER SHARDS` (Redis 6, or an ACL without it).
    use_cluster_slots: bool,
    /// How INFO is asked for: both sections at once until a server refuses that.
    info_form: view::InfoForm,
    /// Commands the server refused, each logged once.
    refused: HashSet<&'static str>,
    /// Nodes dropped from the last topology read (`PROBE_MAX_NODES`).
    dropped_nodes: usize,
    /// `CLUSTER INFO` as read with the last topology, for the next INFO read to publish
    /// (with the lines that did not parse): no second `CLUSTER INFO` is sent for it.
    cluster_info: Option<(info::ClusterInfo, u32)>,
    /// Which answered node is asked for the topology first: advanced every attempt from a
    /// random start, so a fleet of sidecars spreads its topology reads over the nodes instead
    /// of all asking the first primary.
    rotation: usize,
    /// This attempt's cost so far; concurrent PINGs add to it through `&self`.
    dials: AtomicU32,
    commands: AtomicU32,
}

/// Opens connections to nodes with the probe's settings (TLS, user, password), for tasks beside
/// the health loop (the idle canary). The password file, when configured, is read at each dial.
pub struct Connector {
    settings: Settings,
    dialer: Dialer,
}

impl Connector {
    pub fn new(config: &RedisConfig) -> Result<Self, String> {
        tls::install_crypto_provider();
        let settings = Settings::from_config(config);
        Ok(Connector {
            dialer: settings.dialer()?,
            settings,
        })
    }

    /// A new connection to `addr`, authenticated, or why not.
    pub async fn connect(&self, addr: &HostPort) -> Result<MultiplexedConnection, Reason> {
        let password = match &self.settings.password {
            PasswordSource::None => None,
            PasswordSource::Inline(s) => Some(s.clone()),
            PasswordSource::File(p) => read_password_file(p).ok(),
        };
        let login = login(&self.settings, password.as_ref());
        self.dialer.dial(addr, &login).await.map_err(|f| f.reason)
    }
}

/// The set-up redis-rs sends on a new connection: the user and the password, nothing else.
/// No `CLIENT SETINFO` (redis-rs sends LIB-NAME and LIB-VER by default): the least-privilege
/// ACL denies it on Redis 7.2+ and Valkey, which counts every dial in `acl_access_denied_cmd`,
/// the ACL LOG and ElastiCache's `CommandAuthorizationFailures`; Redis 7.0 answers it with an
/// error reply. The sidecar shows in `CLIENT LIST` by its user instead.
fn login(s: &Settings, password: Option<&Secret>) -> RedisConnectionInfo {
    let mut redis = RedisConnectionInfo::default().set_skip_set_lib_name();
    if let Some(u) = &s.username {
        redis = redis.set_username(u);
    }
    if let Some(p) = password {
        redis = redis.set_password(p.expose());
    }
    redis
}

/// One node's PING: the report, the connection when it worked, the detail when it did not.
struct Pinged {
    report: NodeReport,
    conn: Option<MultiplexedConnection>,
    detail: Option<String>,
}

impl RedisProbe {
    /// Reads the password file when one is configured (the only way this fails).
    pub fn new(config: &RedisConfig) -> std::io::Result<Self> {
        tls::install_crypto_provider();
        let password = match &config.password {
            PasswordSource::None => None,
            PasswordSource::Inline(s) => Some(s.clone()),
            PasswordSource::File(p) => Some(read_password_file(p)?),
        };
        let password_file = match &config.password {
            PasswordSource::File(p) => Some(Watched::new(p)),
            _ => None,
        };
        let tls_files = config
            .tls
            .iter()
            .flat_map(|t| {
                [
                    (TlsPart::Ca, &t.files.ca),
                    (TlsPart::Cert, &t.files.cert),
                    (TlsPart::Key, &t.files.key),
                ]
            })
            .filter_map(|(part, path)| Some((part, Watched::new(path.as_ref()?))))
            .collect();
        let settings = Settings::from_config(config);
        let dialer = settings.dialer().map_err(std::io::Error::other)?;
        Ok(RedisProbe {
            password_file,
            tls_files,
            dialer,
            settings,
            password,
            conns: HashMap::new(),
            topology: None,
            use_cluster_slots: false,
            info_form: view::InfoForm::Combined,
            refused: HashSet::new(),
            dropped_nodes: 0,
            cluster_info: None,
            rotation: rand::random::<u16>() as usize,
            dials: AtomicU32::new(0),
            commands: AtomicU32::new(0),
        })
    }

    /// The last topology seen.
    pub fn topology(&self) -> Option<&Topology> {
        self.topology.as_ref()
    }

    /// Nodes the last topology read dropped beyond `PROBE_MAX_NODES`.
    pub fn dropped_nodes(&self) -> usize {
        self.dropped_nodes
    }

    /// Most nodes followed (`PROBE_MAX_NODES`).
    pub fn max_nodes(&self) -> usize {
        self.settings.max_nodes
    }

    /// The set-up redis-rs sends on a new connection: the user, the password in use, the
    /// library name.
    fn login(&self) -> RedisConnectionInfo {
        login(&self.settings, self.password.as_ref())
    }

    /// The node's connection, made if needed; bounded by `deadline`.
    async fn connection(
        &self,
        addr: &HostPort,
        deadline: Instant,
    ) -> Result<MultiplexedConnection, Fault> {
        if let Some(c) = self.conns.get(addr) {
            return Ok(c.clone());
        }
        self.dials.fetch_add(1, Ordering::Relaxed);
        match timeout_at(deadline, self.dialer.dial(addr, &self.login())).await {
            Ok(r) => r,
            Err(_) => Err(Fault::timeout()),
        }
    }

    async fn ping(&self, addr: HostPort, role: Role, deadline: Instant) -> Pinged {
        let started = Instant::now();
        let outcome = async {
            let mut conn = self.connection(&addr, deadline).await?;
            self.commands.fetch_add(1, Ordering::Relaxed);
            match timeout_at(
                deadline,
                redis::cmd("PING").query_async::<String>(&mut conn),
            )
            .await
            {
                Ok(Ok(_)) => Ok(conn),
                Ok(Err(e)) => Err(Fault::redis(e)),
                Err(_) => Err(Fault::timeout()),
            }
        }
        .await;
        let (result, conn, detail) = match outcome {
            Ok(conn) => (Ok(started.elapsed()), Some(conn), None),
            Err(f) => (Err(f.reason), None, Some(f.detail)),
        };
        Pinged {
            report: NodeReport { addr, role, result },
            conn,
            detail,
        }
    }

    /// Fetches the topology from the first of `candidates` that answers. Returns the topology
    /// when one was read (even from a cluster that reports itself down) and the failure, if any.
    async fn discover(
        &mut self,
        candidates: Vec<HostPort>,
        deadline: Instant,
    ) -> (Option<Topology>, Option<Fault>) {
        if !self.settings.cluster_mode {
            return (
                Some(Topology::standalone(self.settings.seeds[0].clone())),
                None,
            );
        }
        let mut last = Fault {
            reason: Reason::Other,
            detail: "no node answered to give the topology".into(),
        };
        for addr in candidates {
            match self.topology_from(&addr, deadline).await {
                Ok(found) => return found,
                Err(f) => last = f,
            }
        }
        // The user may PING but not read the topology: check the seed alone rather than fail
        // a cluster that answers (the log line says what the ACL lacks).
        if last.reason == Reason::Permission && self.topology.is_none() {
            let seed = Topology::standalone(self.settings.seeds[0].clone());
            return (Some(seed), Some(last));
        }
        (None, Some(last))
    }

    /// Asks `addr` for the topology and CLUSTER INFO, in one pipeline. `Err` to try the next
    /// candidate.
    async fn topology_from(
        &mut self,
        addr: &HostPort,
        deadline: Instant,
    ) -> Result<(Option<Topology>, Option<Fault>), Fault> {
        let mut conn = self.connection(addr, deadline).await?;
        self.commands.fetch_add(2, Ordering::Relaxed);
        let shards_cmd = if self.use_cluster_slots {
            "SLOTS"
        } else {
            "SHARDS"
        };
        let reply = timeout_at(
            deadline,
            redis::pipe()
                .ignore_errors()
                .cmd("CLUSTER")
                .arg(shards_cmd)
                .cmd("CLUSTER")
                .arg("INFO")
                .query_async::<Vec<redis::RedisResult<Value>>>(&mut conn),
        )
        .await;
        let mut replies = match reply {
            Ok(Ok(r)) if r.len() == 2 => r.into_iter(),
            Ok(Ok(_)) => {
                return Err(Fault {
                    reason: Reason::Other,
                    detail: format!("{addr}: CLUSTER replies do not match the pipeline"),
                });
            }
            Ok(Err(e)) => {
                let f = Fault::redis(e);
                self.drop_on(addr, f.reason);
                return Err(f);
            }
            Err(_) => {
                self.conns.remove(addr);
                return Err(Fault::timeout());
            }
        };
        self.conns.insert(addr.clone(), conn);
        let (shards, cluster_info) = (replies.next(), replies.next());
        let shards = match shards {
            Some(Ok(v)) => v,
            Some(Err(e)) if !self.use_cluster_slots && shards_refused(&e) => {
                if Reason::of(&e) == Reason::Permission {
                    self.refused("CLUSTER SHARDS", "reading the topology with CLUSTER SLOTS");
                }
                self.use_cluster_slots = true;
                return Ok(Box::pin(self.discover(vec![addr.clone()], deadline)).await);
            }
            Some(Err(e)) => {
                let f = Fault::redis(e);
                match f.reason {
                    Reason::Permission => self.refused(
                        "CLUSTER SLOTS",
                        "the topology is not followed; only the seed address is checked",
                    ),
                    Reason::ClusterModeDisabled => self.refused(
                        "CLUSTER",
                        "the server has cluster mode disabled; set REDIS_CLUSTER_MODE=false",
                    ),
                    _ => {}
                }
                return Err(Fault {
                    detail: format!("{addr}: {}", f.detail),
                    ..f
                });
            }
            None => unreachable!("two replies"),
        };
        let parsed = if self.use_cluster_slots {
            topology::parse_cluster_slots(&shards)
        } else {
            topology::parse_cluster_shards(&shards, self.settings.tls.is_some())
        };
        let t = parsed.map_err(|e| Fault {
            reason: Reason::Other,
            detail: format!("{addr}: {e}"),
        })?;
        let (t, dropped) = t.capped(self.settings.max_nodes);
        if dropped > 0 && self.dropped_nodes == 0 {
            tracing::warn!(
                node = %addr,
                dropped,
                kept = self.settings.max_nodes,
                "topology has more nodes than redis-probe follows; the rest are ignored"
            );
        }
        self.dropped_nodes = dropped;
        let cluster_info = match cluster_info {
            Some(Ok(v)) => redis::from_redis_value::<String>(v).ok(),
            Some(Err(e)) => {
                if Reason::of(&e) == Reason::Permission {
                    self.refused(
                        "CLUSTER INFO",
                        "cluster_state is not read; redis_cluster_* metrics are absent",
                    );
                }
                None
            }
            None => None,
        };
        let Some(cluster_info) = cluster_info else {
            return Ok((Some(t), None));
        };
        let cluster_info = info::ClusterInfo::parse(&cluster_info);
        // A node whose topology reply covers fewer slots than its own CLUSTER INFO says are
        // assigned does not see the shards whole: a Valkey node among Redis 7.0 nodes (which
        // send no shard id) lists each of them in a shard of its own, without slots. Another
        // node's view is taken instead.
        let covered: u64 = t.shards.iter().map(|s| u64::from(s.slots)).sum();
        if let Some(assigned) = cluster_info.0.slots_assigned
            && covered < assigned
            && self.dropped_nodes == 0
        {
            return Err(Fault {
                reason: Reason::Other,
                detail: format!(
                    "{addr}: its topology covers {covered} of the {assigned} slots assigned"
                ),
            });
        }
        let failure = (cluster_info.0.state_ok == Some(false)).then(|| Fault {
            reason: Reason::ClusterDown,
            detail: format!("{addr} reports cluster_state:fail"),
        });
        self.cluster_info = Some(cluster_info);
        Ok((Some(t), failure))
    }

    /// Cluster mode disabled: the server must be a primary, or the app's writes fail. Asks
    /// `INFO replication` (ROLE is in `@dangerous`); a replica's connection is dropped, so the
    /// next attempt dials again and follows a primary endpoint whose name moved.
    async fn check_role(&mut self, addr: &HostPort, deadline: Instant) -> Result<(), Fault> {
        let Some(mut conn) = self.conns.get(addr).cloned() else {
            return Ok(());
        };
        self.commands.fetch_add(1, Ordering::Relaxed);
        let text = match view::section(&mut conn, "replication", deadline).await {
            Ok(t) => t,
            Err(f) if f.reason == Reason::Permission => {
                self.refused("INFO", "the role of the server is not checked, only PING");
                return Ok(());
            }
            Err(f) => {
                self.drop_on(addr, f.reason);
                return Err(f);
            }
        };
        let (fields, _) = info::parse_info(&text);
        match fields.get("role").map(|r| r.trim()) {
            Some("master") => Ok(()),
            Some(role) => {
                self.conns.remove(addr);
                Err(Fault {
                    reason: Reason::NotPrimary,
                    detail: format!("the server's role is {role}, not master"),
                })
            }
            None => {
                self.commands.fetch_add(1, Ordering::Relaxed);
                let server = view::section(&mut conn, "server", deadline).await;
                // Redis says `redis_mode:sentinel`; Valkey `server_mode:sentinel`.
                let sentinel = server.is_ok_and(|t| {
                    let info = info::parse_info(&t).0;
                    ["redis_mode", "server_mode"]
                        .iter()
                        .any(|k| info.get(*k).map(|m| m.trim()) == Some("sentinel"))
                });
                self.conns.remove(addr);
                Err(if sentinel {
                    Fault {
                        reason: Reason::Sentinel,
                        detail: "the address is a Sentinel; set REDIS_ADDRESS to the primary's"
                            .into(),
                    }
                } else {
                    Fault {
                        reason: Reason::Other,
                        detail: "INFO replication names no role".into(),
                    }
                })
            }
        }
    }

    /// Logs, once per command, that the server refused a command the probe sends, and what
    /// the probe does without it.
    fn refused(&mut self, command: &'static str, consequence: &'static str) {
        if self.refused.insert(command) {
            tracing::warn!(
                command,
                user = self.settings.username.as_deref().unwrap_or("default"),
                "the server refused {command}: {consequence}"
            );
        }
    }

    /// PINGs `nodes` concurrently; keeps the connections that worked, drops the others.
    async fn ping_all(
        &mut self,
        nodes: Vec<(HostPort, Role)>,
        deadline: Instant,
        details: &mut Vec<String>,
    ) -> Vec<NodeReport> {
        let pings = join_all(
            nodes
                .into_iter()
                .map(|(addr, role)| self.ping(addr, role, deadline)),
        )
        .await;
        let mut reports = Vec::with_capacity(pings.len());
        for Pinged {
            report,
            conn,
            detail,
        } in pings
        {
            match (conn, report.result) {
                (Some(c), _) => {
                    self.conns.insert(report.addr.clone(), c);
                }
                (None, Err(reason)) => self.drop_on(&report.addr, reason),
                (None, Ok(_)) => {}
            }
            if let Some(d) = detail {
                details.push(format!("{}: {d}", report.addr));
            }
            reports.push(report);
        }
        reports
    }

    fn drop_on(&mut self, addr: &HostPort, reason: Reason) {
        // Server-side answers (LOADING, CLUSTERDOWN, NOPERM) leave the connection usable.
        if !matches!(
            reason,
            Reason::Loading | Reason::ClusterDown | Reason::Permission
        ) {
            self.conns.remove(addr);
        }
    }

    /// Takes up a password file or TLS file that changed since the last check: the next
    /// connections use the new material, and every connection is made again with it (so a
    /// revoked token or a rotated client certificate is noticed now, while old connections
    /// would still pass).
    fn reload_changed_files(&mut self) {
        if self.password_file.as_mut().is_some_and(Watched::changed) {
            self.reload_password();
        }
        let changed: Vec<(TlsPart, PathBuf)> = self
            .tls_files
            .iter_mut()
            .filter_map(|(part, w)| w.changed().then(|| (*part, w.path().to_path_buf())))
            .collect();
        let Some(tls) = self.settings.tls.as_mut() else {
            return;
        };
        let mut reloaded = false;
        for (part, path) in changed {
            let text = path.to_string_lossy().into_owned();
            let read = match part {
                TlsPart::Key => KeyFile::check(text),
                TlsPart::Ca | TlsPart::Cert => CertFile::check(text),
            };
            match (read, part, tls.client.as_mut()) {
                (Ok(f), TlsPart::Ca, _) => tls.ca_pem = Some(f.pem),
                (Ok(f), TlsPart::Cert, Some(c)) => c.cert_pem = f.pem,
                (Ok(f), TlsPart::Key, Some(c)) => c.key_pem = f.pem,
                (Ok(_), _, None) => continue,
                // Half-written during a rotation: keep what works until the next change.
                (Err(e), _, _) => {
                    tracing::warn!(file = %path.display(), problem = %e.what, "TLS file changed but cannot be used; keeping the previous one");
                    continue;
                }
            }
            reloaded = true;
            tracing::info!(file = %path.display(), "TLS file changed; reconnecting with it");
        }
        if reloaded {
            match self.settings.dialer() {
                Ok(d) => self.dialer = d,
                Err(e) => {
                    tracing::warn!(problem = %e, "TLS files changed but do not make a TLS client; keeping the previous one");
                    return;
                }
            }
            self.conns.clear();
        }
    }

    /// Re-reads the password file; drops every connection when the token changed.
    fn reload_password(&mut self) {
        if let PasswordSource::File(path) = &self.settings.password
            && let Ok(new) = read_password_file(path)
            && self.password.as_ref() != Some(&new)
        {
            tracing::info!(file = %path.display(), "password file changed; reconnecting with the new token");
            self.password = Some(new);
            self.conns.clear();
        }
    }

    /// Runs one attempt, bounded by `deadline`, and reports what it cost Redis.
    pub async fn check(&mut self, deadline: Instant) -> CheckReport {
        self.reload_changed_files();
        self.dials.store(0, Ordering::Relaxed);
        self.commands.store(0, Ordering::Relaxed);
        let mut report = self.attempt(deadline).await;
        // Server and library error text goes to logs and diagnose: never with the token in it,
        // whatever a server or a proxy echoes back.
        if let (Some(detail), Some(password)) = (&mut report.detail, &self.password)
            && !password.expose().is_empty()
        {
            *detail = detail.replace(password.expose(), "<redacted>");
        }
        report.cost = Cost {
            dials: self.dials.load(Ordering::Relaxed),
            commands: self.commands.load(Ordering::Relaxed),
            held: self.conns.len() as u32,
        };
        report
    }

    /// Reads `INFO clients stats` from every node with an open connection (section by section
    /// on servers before 7.0, and `maxclients` with `CONFIG GET` where INFO lacks it and
    /// CONFIG is allowed), and hands on the `CLUSTER INFO` the last check read with the
    /// topology. Opens no new connection: nodes the check could not reach are skipped. A node
    /// that refuses INFO is reported as a failure, and logged once.
    pub async fn info(&mut self, deadline: Instant) -> InfoReport {
        let Some(topology) = self.topology.clone() else {
            return InfoReport::default();
        };
        let nodes: Vec<(HostPort, Role, MultiplexedConnection)> = topology
            .nodes()
            .filter_map(|n| Some((n.addr.clone(), n.role, self.conns.get(&n.addr)?.clone())))
            .collect();
        let form = self.info_form;
        let reads = nodes.into_iter().map(|(addr, role, conn)| async move {
            let read = view::read(conn, form, deadline).await;
            (addr, role, read)
        });
        let mut report = InfoReport {
            shards: topology.shards.iter().filter(|s| s.slots > 0).count(),
            ..Default::default()
        };
        let mut commands = 0;
        for (addr, role, read) in join_all(reads).await {
            commands += read.commands;
            if let Some(f) = read.form {
                self.info_form = f;
            }
            match read.result {
                Ok((info, errors)) => {
                    report.parse_errors += errors;
                    report.nodes.push(NodeView { addr, role, info });
                }
                Err(f) => {
                    if f.reason == Reason::Permission {
                        self.refused(
                            "INFO",
                            "the server-side metrics (redis_connected_clients, redis_max_clients, ...) are absent",
                        );
                    }
                    report.failures.push((addr, f.reason));
                }
            }
        }
        if let Some((cluster, errors)) = self.cluster_info.take() {
            report.parse_errors += errors;
            report.cluster = Some(cluster);
        }
        report.cost = Cost {
            dials: 0,
            commands,
            held: self.conns.len() as u32,
        };
        report
    }

    /// PING the known nodes, read the topology from one that answered (the seeds only when none
    /// did), then PING any node the topology added.
    async fn attempt(&mut self, deadline: Instant) -> CheckReport {
        let mut details = vec![];
        let known: Vec<(HostPort, Role)> = self
            .topology
            .iter()
            .flat_map(|t| t.nodes())
            .map(|n| (n.addr.clone(), n.role))
            .collect();
        let mut reports = self.ping_all(known, deadline, &mut details).await;

        let mut candidates: Vec<HostPort> = reports
            .iter()
            .filter(|r| r.result.is_ok())
            .map(|r| r.addr.clone())
            .collect();
        if !candidates.is_empty() {
            self.rotation = self.rotation.wrapping_add(1);
            let start = self.rotation % candidates.len();
            candidates.rotate_left(start);
        }
        for seed in &self.settings.seeds {
            // A seed that is a node which just failed would only fail again.
            if !reports.iter().any(|r| &r.addr == seed) {
                candidates.push(seed.clone());
            }
        }
        let (discovered, topo_failure) = self.discover(candidates, deadline).await;
        if let Some(t) = discovered {
            // ElastiCache Serverless takes RBAC users only; say so once when none is set.
            if t.one_virtual_shard()
                && self.settings.username.is_none()
                && self.refused.insert("one virtual shard")
            {
                tracing::warn!(
                    "one virtual shard behind one host name (ElastiCache Serverless?): it authenticates RBAC users only, and REDIS_USERNAME is not set"
                );
            }
            self.topology = Some(t);
        }
        let Some(topology) = self.topology.clone() else {
            let f = topo_failure.unwrap_or_else(|| Fault {
                reason: Reason::Other,
                detail: "no topology".into(),
            });
            if f.reason == Reason::Auth {
                self.reload_password();
            }
            return CheckReport::failed(f.reason, f.detail);
        };

        // Follow the topology: new nodes get PINGed, departed ones forgotten, roles updated.
        let added: Vec<(HostPort, Role)> = topology
            .nodes()
            .filter(|n| !reports.iter().any(|r| r.addr == n.addr))
            .map(|n| (n.addr.clone(), n.role))
            .collect();
        reports.extend(self.ping_all(added, deadline, &mut details).await);
        let mut nodes: Vec<NodeReport> = topology
            .nodes()
            .filter_map(|n| {
                let r = reports.iter().find(|r| r.addr == n.addr)?;
                Some(NodeReport {
                    addr: n.addr.clone(),
                    role: n.role,
                    result: r.result,
                })
            })
            .collect();
        self.conns
            .retain(|a, _| topology.nodes().any(|n| &n.addr == a));
        if !self.settings.cluster_mode {
            for n in nodes.iter_mut().filter(|n| n.result.is_ok()) {
                if let Err(f) = self.check_role(&n.addr, deadline).await {
                    details.push(format!("{}: {}", n.addr, f.detail));
                    n.result = Err(f.reason);
                }
            }
        }
        if nodes.iter().any(|n| n.result == Err(Reason::Auth)) {
            self.reload_password();
        }

        let result = verdict(&topology, &nodes, topo_failure.as_ref().map(|f| f.reason));
        if let Some(f) = topo_failure {
            details.insert(0, f.detail);
        }
        CheckReport {
            result,
            nodes,
            detail: (!details.is_empty()).then(|| details.join("; ")),
            cost: Cost::default(),
        }
    }
}

impl Probe for RedisProbe {
    fn check(&mut self, deadline: Instant) -> impl Future<Output = CheckReport> + Send {
        RedisProbe::check(self, deadline)
    }

    async fn info(&mut self, deadline: Instant) -> Option<InfoReport> {
        Some(RedisProbe::info(self, deadline).await)
    }
}

/// Pass when every shard with slots has a primary that answered. The reason for a failure,
/// most telling first:
/// - every node failed for the same reason: that reason (a full outage, a wrong password, a
///   wrong CA);
/// - some shard has no node answering at all, or names no primary: `no_primary`;
/// - otherwise a primary failed while its replicas answer (frozen, restarting, failing over):
///   that primary's own reason (`timeout`, `connection_refused`, `connection_reset`, ...).
fn verdict(
    topology: &Topology,
    nodes: &[NodeReport],
    topo_failure: Option<Reason>,
) -> Result<(), Reason> {
    let result = |addr: &HostPort| nodes.iter().find(|n| &n.addr == addr).map(|n| n.result);
    let failing: Vec<&topology::Shard> = topology
        .shards
        .iter()
        .filter(|s| s.slots > 0 || topology.shards.len() == 1)
        .filter(|s| {
            s.primary
                .as_ref()
                .and_then(result)
                .is_none_or(|r| r.is_err())
        })
        .collect();
    if failing.is_empty() {
        return match topo_failure {
            Some(r @ Reason::ClusterDown) => Err(r),
            _ => Ok(()),
        };
    }
    let failed: Vec<Reason> = nodes.iter().filter_map(|n| n.result.err()).collect();
    if let Some(first) = failed.first()
        && failed.len() == nodes.len()
        && failed.iter().all(|r| r == first)
    {
        return Err(*first);
    }
    let whole_shard_down = failing.iter().any(|s| {
        s.primary.is_none()
            || s.nodes
                .iter()
                .all(|n| result(&n.addr).is_none_or(|r| r.is_err()))
    });
    if whole_shard_down {
        return Err(Reason::NoPrimary);
    }
    let primary_reason = failing[0]
        .primary
        .as_ref()
        .and_then(result)
        .and_then(Result::err);
    Err(primary_reason.unwrap_or(Reason::NoPrimary))
}

/// `CLUSTER SHARDS` is missing (Redis before 7.0: "unknown subcommand" on 6.x, "Wrong
/// CLUSTER subcommand" on 4.x and 5.x) or the ACL user may not run it: `CLUSTER SLOTS` next.
fn shards_refused(e: &RedisError) -> bool {
    let s = e.to_string().to_ascii_lowercase();
    Reason::of(e) == Reason::Permission
        || s.contains("unknown subcommand")
        || s.contains("unknown command")
        || s.contains("wrong cluster subcommand")
}

/// What went wrong with one node or command: its label and a log-safe description.
#[derive(Debug, Clone)]
struct Fault {
    reason: Reason,
    detail: String,
}

impl Fault {
    fn redis(e: RedisError) -> Self {
        Fault {
            reason: Reason::of(&e),
            detail: e.to_string(),
        }
    }

    fn timeout() -> Self {
        Fault {
            reason: Reason::Timeout,
            detail: "no answer before the attempt deadline".into(),
        }
    }
}

/// The socket addresses of `addr`: the IP itself, or what its host name resolves to. The one
/// resolver of the crate: the probe's connections, the pool watcher and `diagnose` all use it.
pub async fn resolve(addr: &HostPort) -> std::io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = addr.host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, addr.port)]);
    }
    Ok(tokio::net::lookup_host((addr.host.as_str(), addr.port))
        .await?
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(p: u16) -> HostPort {
        HostPort {
            host: "127.0.0.1".into(),
            port: p,
        }
    }

    fn topo() -> Topology {
        use topology::{Node, Shard};
        let shard = |p: u16, r: u16| Shard {
            slots: 100,
            primary: Some(hp(p)),
            nodes: vec![
                Node {
                    addr: hp(p),
                    role: Role::Primary,
                },
                Node {
                    addr: hp(r),
                    role: Role::Replica,
                },
            ],
        };
        Topology {
            shards: vec![shard(1, 4), shard(2, 5), shard(3, 6)],
        }
    }

    fn reports(results: &[(u16, Result<(), Reason>)]) -> Vec<NodeReport> {
        results
            .iter()
            .map(|(p, r)| NodeReport {
                addr: hp(*p),
                role: if *p <= 3 {
                    Role::Primary
                } else {
                    Role::Replica
                },
                result: r.map(|_| Duration::from_millis(1)),
            })
            .collect()
    }

    #[test]
    fn replica_failure_does_not_fail_the_check() {
        let n = reports(&[
            (1, Ok(())),
            (2, Ok(())),
            (3, Ok(())),
            (4, Err(Reason::Timeout)),
            (5, Ok(())),
            (6, Ok(())),
        ]);
        assert_eq!(verdict(&topo(), &n, None), Ok(()));
    }

    #[test]
    fn one_shard_down_is_no_primary() {
        let n = reports(&[
            (1, Ok(())),
            (2, Ok(())),
            (3, Err(Reason::ConnectionRefused)),
            (4, Ok(())),
            (5, Ok(())),
            (6, Err(Reason::ConnectionRefused)),
        ]);
        assert_eq!(verdict(&topo(), &n, None), Err(Reason::NoPrimary));
    }

    #[test]
    fn a_primary_failing_alone_reports_its_own_reason() {
        let n = reports(&[
            (1, Ok(())),
            (2, Err(Reason::Timeout)),
            (3, Ok(())),
            (4, Ok(())),
            (5, Ok(())),
            (6, Ok(())),
        ]);
        assert_eq!(verdict(&topo(), &n, None), Err(Reason::Timeout));
    }

    #[test]
    fn everything_down_for_one_reason_reports_it() {
        let all: Vec<_> = (1..=6).map(|p| (p, Err(Reason::Auth))).collect();
        assert_eq!(verdict(&topo(), &reports(&all), None), Err(Reason::Auth));
    }

    /// Each server generation's way of saying it has no CLUSTER SHARDS, and an ACL without it.
    #[test]
    fn shards_refusals_fall_back_to_cluster_slots() {
        let err =
            |code: &str, text: &str| redis::make_extension_error(code.into(), Some(text.into()));
        for e in [
            err(
                "ERR",
                "Unknown subcommand or wrong number of arguments for 'SHARDS'. Try CLUSTER HELP.",
            ),
            err("ERR", "Wrong CLUSTER subcommand or number of arguments"),
            err(
                "NOPERM",
                "this user has no permissions to run the 'cluster|shards' command",
            ),
        ] {
            assert!(shards_refused(&e), "{e}");
        }
        assert!(!shards_refused(&err(
            "ERR",
            "This instance has cluster support disabled"
        )));
    }

    #[test]
    fn cluster_state_fail_with_all_primaries_up() {
        let all: Vec<_> = (1..=6).map(|p| (p, Ok(()))).collect();
        assert_eq!(
            verdict(&topo(), &reports(&all), Some(Reason::ClusterDown)),
            Err(Reason::ClusterDown)
        );
    }
}
