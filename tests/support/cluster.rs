//! A real deployment of Redis or Valkey processes, owned by one test.

mod names;

pub use names::node_name;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::engine::free_ports_with_bus;
use super::{
    CertNames, Engine, HOST_ONLY_NAME, PASSWORD, Pki, die_with_parent, fast_timings, free_ports,
    netns, patient_timeouts, proxy, run_with_timeout, spawn_from_lasting_thread, with_vars,
};

/// One `redis-server` process.
pub struct Node {
    /// The name the node is announced and reached by: its IP, `localhost` (the ElastiCache
    /// shape) or a name of its own (`nodeN.redis-probe.test`, [`Options::host_names`]).
    pub host: String,
    /// The address it listens on and redis-cli reaches it at.
    pub ip: String,
    /// The port `redis-server` listens on (redis-cli uses it).
    pub port: u16,
    /// The port the cluster announces for this node: a [`proxy::ResetProxy`] in front of it
    /// when the cluster is proxied, else `port`.
    pub public_port: u16,
    pub bus_port: u16,
    pub dir: PathBuf,
    /// The server binary this node runs when not the deployment's (a rolling upgrade).
    pub server: Option<PathBuf>,
    child: Option<Child>,
}

impl Node {
    /// The address clients (the sidecar) reach the node at.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.public_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// What kind of deployment to start.
#[derive(Clone, Debug)]
pub struct Options {
    pub names: CertNames,
    /// 3 primaries + 3 replicas when true; one standalone server when false.
    pub cluster: bool,
    /// Nodes require a client certificate (`tls-auth-clients yes`).
    pub mtls: bool,
    /// Every node announces a [`proxy::ResetProxy`] in front of it, so every client connection
    /// (the sidecar's, and replication) can be reset on demand.
    pub proxied: bool,
    /// The node certificate expires in this many days.
    pub cert_days: Option<i64>,
    /// Which deployment the nodes look like.
    pub shape: Shape,
    /// Which server runs them: [`Engine::suite`] unless the test names one.
    pub engine: Engine,
    /// Clients and nodes speak TLS (the engine must be built with it); plain text with a
    /// password when false.
    pub tls: bool,
    /// Standalone only: a replica of the server, and the endpoint in front of the primary.
    pub replica: bool,
    /// Cluster only: shards of a primary and a replica each, 3 (`--cluster create`) or 1 (all
    /// 16384 slots on one primary, as ElastiCache Serverless's one virtual shard shows).
    pub shards: usize,
    /// The nodes run in this network namespace (a [`netns::Lab`]'s `srv`), on
    /// [`netns::SRV_IP`].
    pub netns: Option<String>,
    /// With `netns`: every node announces a [`proxy::DelayProxy`] in front of it that holds
    /// each chunk this long in each direction.
    pub latency: Option<Duration>,
    /// Every node announced by a name of its own, `node{i}.redis-probe.test`, which the hosts
    /// file [`Cluster::hosts_file`] maps to its address (the sidecar reads it through
    /// [`super::Sidecar::spawn_resolving`]), as ElastiCache names each node.
    pub host_names: bool,
}

/// What the deployment looks like from a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Nodes announced by IP; the sidecar is given the CA file and the admin password.
    Lab,
    /// As ElastiCache with in-transit encryption: nodes announced by host name (`localhost`)
    /// with a certificate naming only it, the CA trusted through the system store
    /// (`SSL_CERT_FILE`, no `REDIS_TLS_CA_FILE`), CONFIG and DEBUG removed,
    /// `cluster-require-full-coverage no`, and the sidecar logged in as the least-privilege
    /// user [`PROBE_USER`] with [`PROBE_ACL`]. The harness keeps the admin user.
    ElastiCache,
}

/// The least-privilege user of [`Shape::ElastiCache`], and its ACL rules: the README's.
pub const PROBE_USER: &str = "probe";
pub const PROBE_USER_PASSWORD: &str = "pr0be-User-Secret-77";
pub const PROBE_ACL: &str = "-@all +ping +info +cluster|shards +cluster|slots +cluster|info";

impl Options {
    /// One standalone TLS server.
    pub fn standalone() -> Self {
        Options {
            cluster: false,
            ..Options::default()
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        let engine = Engine::suite();
        Options {
            names: CertNames::Loopback,
            cluster: true,
            mtls: false,
            proxied: false,
            cert_days: None,
            shape: Shape::Lab,
            engine,
            tls: engine.tls_capable(),
            replica: false,
            shards: 3,
            netns: None,
            latency: None,
            host_names: false,
        }
    }
}

impl Options {
    /// The ElastiCache shape, a cluster.
    pub fn elasticache() -> Self {
        Options {
            names: CertNames::Localhost,
            shape: Shape::ElastiCache,
            ..Options::default()
        }
    }

    /// A Redis 6.2 cluster, plain text with a password.
    pub fn redis6() -> Self {
        Self::on(Engine::Redis6)
    }

    /// A cluster on `engine`, with TLS when it has it.
    pub fn on(engine: Engine) -> Self {
        Options {
            engine,
            tls: engine.tls_capable(),
            ..Options::default()
        }
    }
}

/// A TLS + AUTH Redis deployment owned by one test.
pub struct Cluster {
    pub dir: TempDir,
    pub pki: Pki,
    /// A CA that signed nothing in this cluster.
    pub other_ca: PathBuf,
    pub nodes: Vec<Node>,
    pub password: String,
    pub names: CertNames,
    pub mtls: bool,
    /// One per node when proxied.
    pub proxies: Vec<proxy::ResetProxy>,
    /// One per node with a latency.
    pub delays: Vec<proxy::DelayProxy>,
    /// Standalone with a replica: the primary endpoint, a proxy the test points at the
    /// primary (as DNS follows the primary on ElastiCache).
    pub endpoint: Option<proxy::ResetProxy>,
    pub shape: Shape,
    pub engine: Engine,
    pub tls: bool,
    /// Cluster mode (else standalone, with or without a replica).
    pub cluster_mode: bool,
    netns: Option<String>,
    /// The address the nodes listen on and redis-cli reaches them at.
    bind_ip: &'static str,
    /// Nodes announced by names of their own ([`Options::host_names`]).
    host_names: bool,
    redis_server: PathBuf,
    redis_cli: PathBuf,
}

impl Cluster {
    /// [`Cluster::start`] on a blocking thread, for async tests.
    pub async fn launch(opts: Options) -> Cluster {
        tokio::task::spawn_blocking(move || Cluster::start(opts))
            .await
            .expect("starting the deployment")
    }

    /// Starts the deployment and waits until it is healthy (blocking).
    pub fn start(opts: Options) -> Cluster {
        assert!(
            !opts.tls || opts.engine.tls_capable(),
            "{:?} is built without TLS: start it with `tls: false`",
            opts.engine
        );
        let (redis_server, redis_cli) = opts.engine.binaries();
        let dir = tempfile::Builder::new()
            .prefix("redis-probe-test")
            .tempdir()
            .unwrap();
        let pki = Pki::generate_valid_for(dir.path(), opts.names, "", opts.cert_days);
        let other = Pki::generate(dir.path(), CertNames::Loopback, "other-");
        if opts.shape == Shape::ElastiCache {
            // The "system" trust store: a bundle holding the cluster's CA, as the public root
            // is in a container image's bundle.
            std::fs::copy(&pki.ca, dir.path().join("trust-store.pem")).unwrap();
        }
        assert!(
            opts.shards == 3 || opts.shards == 1,
            "3 shards or 1, not {}",
            opts.shards
        );
        let count = match (opts.cluster, opts.replica) {
            (true, _) => 2 * opts.shards,
            (false, true) => 2,
            (false, false) => 1,
        };
        let ports: Vec<(u16, u16)> = if opts.engine.has_cluster_port() {
            free_ports(count * 2)
                .chunks(2)
                .map(|c| (c[0], c[1]))
                .collect()
        } else {
            free_ports_with_bus(count)
        };
        let bind_ip = if opts.netns.is_some() {
            netns::SRV_IP
        } else {
            "127.0.0.1"
        };
        let host = if opts.shape == Shape::ElastiCache {
            "localhost"
        } else {
            bind_ip
        };
        let mut c = Cluster {
            dir,
            pki,
            other_ca: other.ca,
            nodes: vec![],
            password: PASSWORD.to_string(),
            names: opts.names,
            mtls: opts.mtls,
            proxies: vec![],
            delays: vec![],
            endpoint: None,
            shape: opts.shape,
            engine: opts.engine,
            tls: opts.tls,
            cluster_mode: opts.cluster,
            netns: opts.netns.clone(),
            bind_ip,
            host_names: opts.host_names,
            redis_server,
            redis_cli,
        };
        for (i, (port, bus_port)) in ports.into_iter().enumerate() {
            let node_dir = c.dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let mut public_port = port;
            if opts.proxied {
                let p = proxy::ResetProxy::start_sync(format!("127.0.0.1:{port}").parse().unwrap());
                public_port = p.addr.port();
                c.proxies.push(p);
            }
            if let (Some(ns), Some(delay)) = (opts.netns.as_deref(), opts.latency) {
                let upstream = format!("{bind_ip}:{port}").parse().unwrap();
                let p = proxy::DelayProxy::start_in(ns, bind_ip, upstream, delay);
                public_port = p.addr.port();
                c.delays.push(p);
            }
            c.nodes.push(Node {
                host: match opts.host_names {
                    true => node_name(i),
                    false => host.to_string(),
                },
                ip: bind_ip.to_string(),
                port,
                public_port,
                bus_port,
                dir: node_dir,
                server: None,
                child: None,
            });
            c.write_conf(i, opts.cluster);
            c.start_node(i);
        }
        for i in 0..count {
            c.wait_pong(i);
        }
        if opts.host_names {
            c.write_hosts();
        }
        if opts.replica {
            let primary = format!("127.0.0.1:{}", c.nodes[0].port);
            c.endpoint = Some(proxy::ResetProxy::start_sync(primary.parse().unwrap()));
            c.wait_for(Duration::from_secs(30), "the replica is in sync", |c| {
                c.cli(1, &["INFO", "replication"])
                    .contains("master_link_status:up")
            });
        }
        if opts.cluster && opts.shards == 1 {
            c.one_shard();
        } else if opts.cluster {
            let addrs: Vec<String> = c
                .nodes
                .iter()
                // Through a delay proxy the many round trips of `--cluster create` would outlast
                // redis-cli's timeout: the nodes' own ports (they announce the proxies').
                .map(|n| {
                    let port = if c.delays.is_empty() {
                        n.public_port
                    } else {
                        n.port
                    };
                    format!("{bind_ip}:{port}")
                })
                .collect();
            let mut args: Vec<&str> = vec!["--cluster", "create"];
            args.extend(addrs.iter().map(String::as_str));
            args.extend(["--cluster-replicas", "1", "--cluster-yes"]);
            let out = c.cli_output(0, &args);
            assert!(
                out.status.success(),
                "cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            c.wait_healthy(Duration::from_secs(60));
        }
        c
    }

    /// One shard by hand (`--cluster create` wants three primaries): every slot on node 0, node
    /// 1 met and made its replica.
    fn one_shard(&mut self) {
        let ok = |out: String, what: &str| assert!(out.contains("OK"), "{what}: {out}");
        ok(
            self.cli(0, &["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]),
            "ADDSLOTSRANGE",
        );
        let (port, bus) = (
            self.nodes[0].port.to_string(),
            self.nodes[0].bus_port.to_string(),
        );
        ok(
            self.cli(1, &["CLUSTER", "MEET", &self.nodes[0].ip, &port, &bus]),
            "MEET",
        );
        let id = self.cli(0, &["CLUSTER", "MYID"]).trim().to_string();
        self.wait_for(Duration::from_secs(30), "node 1 knows node 0", |c| {
            c.cli(1, &["CLUSTER", "NODES"]).contains(&id)
        });
        ok(self.cli(1, &["CLUSTER", "REPLICATE", &id]), "REPLICATE");
        self.wait_healthy(Duration::from_secs(60));
    }

    /// Waits until node `i` answers PING (20 s at most).
    pub fn wait_pong(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.cli_output(i, &["PING"]);
            if String::from_utf8_lossy(&out.stdout).trim() == "PONG" {
                return;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.nodes[i].dir.join("redis.log"))
                    .unwrap_or_default();
                panic!(
                    "node {i} does not answer PING: {}{}\nserver log:\n{log}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn write_conf(&self, i: usize, cluster: bool) {
        let n = &self.nodes[i];
        let mut conf = format!(
            "bind {bind}\nrequirepass {pw}\nmasterauth {pw}\ndir {dir}\n\
             save \"\"\nappendonly no\nloglevel notice\nlogfile {dir}/redis.log\n",
            pw = self.password,
            dir = n.dir.display(),
            bind = n.ip,
        );
        match self.tls {
            true => conf.push_str(&format!(
                "port 0\ntls-port {port}\ntls-cert-file {cert}\ntls-key-file {key}\ntls-ca-cert-file {ca}\n\
                 tls-auth-clients {mtls}\ntls-replication yes\n",
                port = n.port,
                cert = self.pki.cert.display(),
                key = self.pki.key.display(),
                ca = self.pki.ca.display(),
                mtls = if self.mtls { "yes" } else { "no" },
            )),
            false => conf.push_str(&format!("port {}\n", n.port)),
        }
        match self.shape {
            Shape::Lab if self.engine.gates_debug() => {
                conf.push_str("enable-debug-command local\n")
            }
            Shape::Lab => {}
            Shape::ElastiCache => conf.push_str(&format!(
                "rename-command CONFIG \"\"\nrename-command DEBUG \"\"\n\
                 user {PROBE_USER} on >{PROBE_USER_PASSWORD} {PROBE_ACL}\n"
            )),
        }
        if i > 0 && !cluster && self.nodes.len() > 1 {
            conf.push_str(&format!(
                "replicaof {} {}\n",
                self.nodes[0].ip, self.nodes[0].port
            ));
        }
        if cluster {
            conf.push_str(
                "cluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout 2000\n",
            );
            if self.engine.has_cluster_port() {
                conf.push_str(&format!("cluster-port {}\n", n.bus_port));
            }
            if self.tls {
                conf.push_str(&format!(
                    "tls-cluster yes\ncluster-announce-tls-port {}\n",
                    n.public_port
                ));
            } else {
                conf.push_str(&format!("cluster-announce-port {}\n", n.public_port));
            }
            if self.shape == Shape::ElastiCache {
                conf.push_str(
                    "cluster-announce-hostname localhost\ncluster-preferred-endpoint-type hostname\n\
                     cluster-require-full-coverage no\n",
                );
            }
            if self.host_names {
                conf.push_str(&format!(
                    "cluster-announce-ip {}\ncluster-announce-hostname {}\n\
                     cluster-preferred-endpoint-type hostname\n",
                    n.ip, n.host
                ));
            }
        }
        std::fs::write(n.dir.join("redis.conf"), conf).unwrap();
    }

    /// Starts (or restarts) node `i` with its existing config and cluster state.
    pub fn start_node(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "node {i} is already running");
        let server = self.nodes[i]
            .server
            .clone()
            .unwrap_or(self.redis_server.clone());
        let mut cmd = self.in_netns(&server);
        cmd.arg(self.nodes[i].dir.join("redis.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        self.nodes[i].child = Some(spawn_from_lasting_thread(cmd).expect("starting redis-server"));
    }

    /// A new empty cluster node (no slots, not met), running: for `--cluster add-node`.
    pub fn spawn_extra(&mut self) -> usize {
        assert!(
            self.engine.has_cluster_port(),
            "extra nodes need a cluster-port engine"
        );
        let ports = free_ports(2);
        let i = self.nodes.len();
        let dir = self.dir.path().join(format!("node{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        self.nodes.push(Node {
            host: match self.host_names {
                true => node_name(i),
                false => self.nodes[0].host.clone(),
            },
            ip: self.bind_ip.to_string(),
            port: ports[0],
            public_port: ports[0],
            bus_port: ports[1],
            dir,
            server: None,
            child: None,
        });
        self.write_conf(i, true);
        self.start_node(i);
        self.wait_pong(i);
        i
    }

    /// The node id of node `i` (`CLUSTER MYID`).
    pub fn node_id(&self, i: usize) -> String {
        self.cli(i, &["CLUSTER", "MYID"]).trim().to_string()
    }

    /// Kills every node: a full outage.
    pub fn kill_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }

    /// Starts every node again and waits until the cluster is healthy.
    pub fn restart_all(&mut self, limit: Duration) {
        for i in 0..self.nodes.len() {
            self.start_node(i);
        }
        self.wait_healthy(limit);
    }

    /// Stops node `i` at once (SIGKILL), as a crashed host would.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops node `i` gracefully (SIGTERM) and waits for it to exit, as a restart does.
    pub fn stop_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    /// Node `i` when given, else every running node.
    pub fn running(&self, at: Option<usize>) -> Vec<usize> {
        match at {
            Some(i) => vec![i],
            None => (0..self.nodes.len())
                .filter(|i| self.nodes[*i].child.is_some())
                .collect(),
        }
    }

    pub fn signal(&self, i: usize, sig: i32) {
        let pid = self.nodes[i].pid().expect("node is running");
        unsafe { libc::kill(pid as i32, sig) };
    }

    /// Runs `redis-cli` against node `i` over TLS with the password; stdout as text.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.cli_output(i, args).stdout).into_owned()
    }

    pub fn cli_output(&self, i: usize, args: &[&str]) -> std::process::Output {
        run_with_timeout(self.cli_command(i, args), Duration::from_secs(10))
    }

    /// As [`Cluster::cli_output`], for long runs (`--cluster reshard`): at most `limit`.
    pub fn cli_output_within(
        &self,
        i: usize,
        args: &[&str],
        limit: Duration,
    ) -> std::process::Output {
        run_with_timeout(self.cli_command(i, args), limit)
    }

    /// The `redis-cli` command line for node `i` (TLS, password), for callers that stream its
    /// output (`MONITOR`).
    pub fn cli_command(&self, i: usize, args: &[&str]) -> Command {
        let port = self.nodes[i].port.to_string();
        let mut cmd = self.in_netns(&self.redis_cli);
        if self.tls {
            cmd.args(["--tls", "--cacert"])
                .arg(&self.pki.ca)
                .arg("--cert")
                .arg(&self.pki.cert)
                .arg("--key")
                .arg(&self.pki.key);
        }
        cmd.args([
            "-h",
            &self.nodes[i].ip,
            "-p",
            &port,
            "--no-auth-warning",
            "-a",
            &self.password,
        ])
        .stdin(Stdio::null());
        if self.names == CertNames::HostOnly {
            cmd.args(["--sni", HOST_ONLY_NAME]);
        }
        cmd.args(args);
        cmd
    }

    /// `program`, run in the nodes' network namespace when they have one.
    fn in_netns(&self, program: &Path) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    /// Runs `args` on every running node (ACL rules and passwords are per node).
    pub fn cli_all(&self, args: &[&str]) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_some() {
                let out = self.cli(i, args);
                assert!(!out.starts_with("ERR"), "node {i}: {args:?}: {out}");
            }
        }
    }

    /// Polls `f` until it holds, or panics after `limit` with `what`.
    pub fn wait_for(&self, limit: Duration, what: &str, f: impl Fn(&Cluster) -> bool) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if f(self) {
                return;
            }
            // Each poll runs redis-cli processes with TLS handshakes; polling faster loads the
            // 2-core machine enough to slow the very cluster being watched.
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("timed out after {limit:?} waiting until {what}");
    }

    /// Every node running says `cluster_state:ok`, and every primary has its replica.
    pub fn is_healthy(&self) -> bool {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].child.is_some())
            .collect();
        if running.len() != self.nodes.len() {
            return false;
        }
        let mut primaries_with_replica = 0;
        for &i in &running {
            if !self
                .cli(i, &["CLUSTER", "INFO"])
                .contains("cluster_state:ok")
            {
                return false;
            }
            let repl = self.cli(i, &["INFO", "replication"]);
            if repl.contains("role:master") && repl.contains("connected_slaves:1") {
                primaries_with_replica += 1;
            }
            if repl.contains("role:slave") && !repl.contains("master_link_status:up") {
                return false;
            }
        }
        primaries_with_replica == self.nodes.len() / 2
    }

    pub fn wait_healthy(&self, limit: Duration) {
        self.wait_for(limit, "the cluster is healthy", Cluster::is_healthy);
    }

    /// Addresses of nodes whose role is `master`.
    pub fn primaries(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| {
                self.nodes[*i].child.is_some() && self.cli(*i, &["ROLE"]).starts_with("master")
            })
            .collect()
    }

    /// A planned failover (`CLUSTER FAILOVER` on the first primary's replica, from the
    /// harness's admin connection); returns (old primary, new primary).
    pub fn fail_over(&self) -> (usize, usize) {
        let primary = self.primaries()[0];
        let replica = self.replica_of(primary);
        // The server's own answer first, so a failover that never happened is not taken for
        // the sidecar's failure to follow it. A manual failover gives up when the replica
        // cannot catch up in time (seen on Redis 6.2 on a busy machine): asked again, up to
        // three times.
        for _ in 0..3 {
            let out = self.cli(replica, &["CLUSTER", "FAILOVER"]);
            assert!(out.contains("OK"), "CLUSTER FAILOVER: {out}");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if self.cli(replica, &["ROLE"]).starts_with("master") {
                    return (primary, replica);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        panic!("the replica did not take over after three CLUSTER FAILOVERs");
    }

    /// The replica of primary `p`.
    pub fn replica_of(&self, p: usize) -> usize {
        let port = self.nodes[p].port.to_string();
        (0..self.nodes.len())
            .find(|i| {
                let role = self.cli(*i, &["ROLE"]);
                let lines: Vec<&str> = role.lines().collect();
                lines.first() == Some(&"slave") && lines.get(2) == Some(&port.as_str())
            })
            .unwrap_or_else(|| panic!("node {p} has no replica"))
    }

    /// Every running node says `cluster_state:ok`.
    pub fn running_nodes_ok(&self) -> bool {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].child.is_some())
            .all(|i| {
                self.cli(i, &["CLUSTER", "INFO"])
                    .contains("cluster_state:ok")
            })
    }

    /// The address the sidecar is given: the first node, or the primary endpoint.
    pub fn seed(&self) -> String {
        match &self.endpoint {
            Some(e) => e.addr.to_string(),
            None => self.nodes[0].addr(),
        }
    }

    /// Environment for a sidecar against this cluster, with short test timings.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut v = self.connection_env();
        v.push(("PROBE_LISTEN".into(), "127.0.0.1:0".into()));
        v.extend(fast_timings());
        v
    }

    /// `env()` with the default attempt and socket timeouts (`patient_timeouts`), for tests
    /// whose claim needs no attempt to time out.
    pub fn patient_env(&self) -> Vec<(String, String)> {
        with_vars(self.env(), &patient_timeouts())
    }

    /// The variables that point a sidecar at this cluster, nothing else. In the ElastiCache
    /// shape the CA comes through `SSL_CERT_FILE`, which only a sidecar in a process of its own
    /// ([`Sidecar::spawn_binary`]) reads.
    pub fn connection_env(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("REDIS_ADDRESS".to_string(), self.seed()),
            ("REDIS_CLUSTER_MODE".into(), self.cluster_mode.to_string()),
        ];
        let tls = self.tls;
        v.push(("REDIS_TLS_ENABLED".into(), tls.to_string()));
        match self.shape {
            Shape::Lab => {
                if tls {
                    v.push((
                        "REDIS_TLS_CA_FILE".into(),
                        self.pki.ca.display().to_string(),
                    ));
                }
                v.push(("REDIS_PASSWORD".into(), self.password.clone()));
            }
            Shape::ElastiCache => {
                v.push((
                    "SSL_CERT_FILE".into(),
                    self.dir
                        .path()
                        .join("trust-store.pem")
                        .display()
                        .to_string(),
                ));
                v.push(("REDIS_USERNAME".into(), PROBE_USER.into()));
                v.push(("REDIS_PASSWORD".into(), PROBE_USER_PASSWORD.into()));
            }
        }
        v
    }

    /// Full text of every node's log, for assertions on what Redis saw.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| std::fs::read_to_string(n.dir.join("redis.log")).unwrap_or_default())
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            // A stopped (SIGSTOP) process must be continued to die cleanly under wait().
            if let Some(pid) = self.nodes[i].pid() {
                unsafe { libc::kill(pid as i32, libc::SIGCONT) };
            }
            self.kill_node(i);
        }
    }
}

/// A Sentinel (`--sentinel`) of `engine` on a free loopback port, plain text, watching
/// nothing; killed on drop.
pub struct Sentinel {
    pub port: u16,
    _dir: TempDir,
    child: Child,
}

impl Sentinel {
    pub fn start(engine: Engine) -> Sentinel {
        let (server, _) = engine.binaries();
        let dir = tempfile::tempdir().unwrap();
        let port = free_ports(1)[0];
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(&conf, format!("bind 127.0.0.1\nport {port}\n")).unwrap();
        let mut cmd = Command::new(server);
        cmd.arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        let child = spawn_from_lasting_thread(cmd).expect("starting a Sentinel");
        super::eventually_blocking(
            Duration::from_secs(20),
            Duration::from_millis(50),
            "the Sentinel listens",
            || {
                super::holds(
                    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
                    String::new,
                )
            },
        );
        Sentinel {
            port,
            _dir: dir,
            child,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
