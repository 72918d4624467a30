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
//!    seed addresses are asked only when no known node answers. A reply that leaves a node out
//!    is checked with the same node's `CLUSTER SLOTS` and another node's view ([`askers`]).
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

mod askers;
mod dial;
mod discover;
pub mod info;
pub mod material;
pub mod reason;
mod reload;
mod report;
pub mod tls;
pub mod topology;
mod view;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use redis::{RedisConnectionInfo, RedisError};
use tokio::time::{Instant, timeout_at};

use self::dial::Dialer;
use self::material::Watched;
pub use self::reason::Reason;
use self::reload::TlsPart;
use self::report::verdict;
pub use self::report::{CheckReport, Cost, InfoReport, NodeReport, NodeView};
pub use self::topology::{Role, Topology};
pub use self::view::identity;
use crate::config::{HostPort, PasswordSource, RedisConfig, Secret, TlsConfig, read_password_file};

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
    /// Nodes whose topology replies left out nodes others list: asked last.
    askers: askers::Askers,
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
            askers: askers::Askers::default(),
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
        let dialed = match timeout_at(deadline, self.dialer.dial(addr, &self.login())).await {
            Ok(r) => r,
            Err(_) => Err(Fault::timeout()),
        };
        if let Err(f) = &dialed
            && matches!(f.reason, Reason::Auth | Reason::MaxClients)
        {
            // A failed AUTH costs a second connection: the bare PING that tells maxclients.
            self.dials.fetch_add(1, Ordering::Relaxed);
        }
        dialed
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

        let answered: Vec<HostPort> = reports
            .iter()
            .filter(|r| r.result.is_ok())
            .map(|r| r.addr.clone())
            .collect();
        let mut candidates = answered.clone();
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
        let (discovered, topo_failure) = self.read_topology(candidates, &answered, deadline).await;
        if let Some(t) = discovered {
            self.askers.keep_only(&t);
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
