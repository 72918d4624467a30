//! The pod's connections to Redis, seen from its network namespace.
//!
//! Containers of a pod share one network namespace, so `/proc/net/tcp` and `/proc/net/tcp6`
//! list the application's sockets as well as the sidecar's. Counting the established ones whose
//! remote end is a cluster node gives the application's pool usage without touching the
//! application; the sidecar's own sockets (found through `/proc/self/fd`) are left out.
//!
//! The ceiling follows go-redis: a cluster client's `PoolSize` applies **per node**, so a pod
//! may open `REDIS_POOL_SIZE` connections to every node it talks to: the primaries, or every
//! node when `REDIS_READ_ONLY` or `REDIS_ROUTE_BY_LATENCY` lets reads go to replicas.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, HostPort};
use crate::health;
use crate::metrics::{Ceiling, Metrics, ParseSource};
use crate::probe::Role;
pub use crate::tcpstats::NodeTcp;

/// TCP state `ESTABLISHED` in `/proc/net/tcp`.
const ESTABLISHED: &str = "01";

/// One socket line of `/proc/net/tcp{,6}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub established: bool,
    pub inode: u64,
}

/// Why a line of `/proc/net/tcp` did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed /proc/net/tcp line: {0}")]
pub struct LineError(&'static str);

/// Parses one socket line of `/proc/net/tcp` or `/proc/net/tcp6` (not the header).
pub fn parse_line(line: &str) -> Result<Socket, LineError> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 {
        return Err(LineError("too few fields"));
    }
    Ok(Socket {
        local: parse_addr(f[1])?,
        remote: parse_addr(f[2])?,
        established: f[3] == ESTABLISHED,
        inode: f[9].parse().map_err(|_| LineError("inode"))?,
    })
}

/// `0100007F:1A0B` (IPv4) or 32 hex digits `:port` (IPv6). The kernel prints each 32-bit word
/// in host byte order (little-endian on the machines this runs on).
fn parse_addr(s: &str) -> Result<SocketAddr, LineError> {
    let (ip, port) = s.split_once(':').ok_or(LineError("address"))?;
    let port = u16::from_str_radix(port, 16).map_err(|_| LineError("port"))?;
    // Each 32-bit word of the address as the kernel holds it in memory.
    let word = |hex: &str| {
        u32::from_str_radix(hex, 16)
            .map(u32::to_ne_bytes)
            .map_err(|_| LineError("address"))
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(ip)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                chunk.copy_from_slice(&word(&ip[i * 8..i * 8 + 8])?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return Err(LineError("address length")),
    };
    Ok(SocketAddr::new(canonical(ip), port))
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) as plain IPv4, so one node matches both.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn canonical_addr(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(a.ip()), a.port())
}

/// Socket inodes the current process holds (`/proc/self/fd/* -> socket:[inode]`).
pub fn own_socket_inodes(fd_dir: &Path) -> HashSet<u64> {
    let Ok(entries) = std::fs::read_dir(fd_dir) else {
        return HashSet::new();
    };
    entries
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// Established connections per remote address, and the lines that did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    pub per_addr: HashMap<SocketAddr, u64>,
    pub bad_lines: usize,
}

impl Counts {
    /// Connections to any of `addrs`.
    pub fn to_any(&self, addrs: &[SocketAddr]) -> u64 {
        addrs
            .iter()
            .map(|a| self.per_addr.get(&canonical_addr(*a)).copied().unwrap_or(0))
            .sum()
    }
}

/// Counts established connections to `nodes` in both tables of the current network namespace,
/// line by line: a pod with thousands of sockets costs no more memory than one with ten.
/// Sockets in `exclude` (the sidecar's own) are left out. `None` when `/proc/net/tcp` does not
/// exist (not Linux).
pub fn count_in_namespace(
    proc_net: &Path,
    nodes: &[SocketAddr],
    exclude: &HashSet<u64>,
) -> Option<Counts> {
    use std::io::BufRead;
    let mut counts = Counts {
        per_addr: nodes.iter().map(|n| (canonical_addr(*n), 0)).collect(),
        bad_lines: 0,
    };
    for (i, table) in ["tcp", "tcp6"].iter().enumerate() {
        let file = match std::fs::File::open(proc_net.join(table)) {
            Ok(f) => f,
            Err(_) if i > 0 => continue,
            Err(_) => return None,
        };
        // Each read() of these files makes the kernel walk its socket table again: read in
        // large chunks so a table costs one or two walks.
        let reader = std::io::BufReader::with_capacity(64 * 1024, file);
        for line in reader.lines().skip(1).map_while(Result::ok) {
            if line.trim().is_empty() {
                continue;
            }
            match parse_line(&line) {
                Ok(s) if s.established && !exclude.contains(&s.inode) => {
                    if let Some(c) = counts.per_addr.get_mut(&s.remote) {
                        *c += 1;
                    }
                }
                Ok(_) => {}
                Err(_) => counts.bad_lines += 1,
            }
        }
    }
    Some(counts)
}

/// The nodes the application opens connections to: the primaries, or every node when reads
/// may go to replicas (`REDIS_READ_ONLY`, `REDIS_ROUTE_BY_LATENCY`).
pub fn nodes_used(primaries: u64, all_nodes: u64, reads_from_replicas: bool) -> u64 {
    if reads_from_replicas {
        all_nodes
    } else {
        primaries
    }
}

/// What the pool watcher needs from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub interval: Duration,
    /// `REDIS_POOL_SIZE`: the app's pool per node.
    pub pool_size: Option<u32>,
    /// `PROBE_POOL_MAX_CONNS`: overrides the computed ceiling.
    pub max_override: Option<u32>,
    /// `REDIS_READ_ONLY` or `REDIS_ROUTE_BY_LATENCY`: the app also connects to replicas.
    pub reads_from_replicas: bool,
}

impl Settings {
    pub fn from_config(c: &Config) -> Self {
        let app = &c.redis.app_pool;
        Settings {
            interval: c.observe.pool_interval,
            pool_size: app.size,
            max_override: c.observe.pool_max_conns,
            reads_from_replicas: app.reads_from_replicas(),
        }
    }

    /// The pod's ceiling for the topology, when known.
    pub fn ceiling(&self, primaries: u64, all: u64) -> Option<Ceiling> {
        let used = nodes_used(primaries, all, self.reads_from_replicas);
        let (pod, per_node) = match (self.max_override, self.pool_size) {
            (Some(max), Some(size)) => (u64::from(max), u64::from(size)),
            (Some(max), None) => (u64::from(max), u64::from(max) / used.max(1)),
            (None, Some(size)) => (u64::from(size) * used, u64::from(size)),
            (None, None) => return None,
        };
        Some(Ceiling { pod, per_node })
    }
}

/// What the pod's sockets to the nodes show.
#[derive(Debug, Clone, Default)]
pub struct PodView {
    /// Established connections per node (`host:port`), the sidecar's own excluded.
    pub per_node: Vec<(String, u64)>,
    /// `/proc/net/tcp` lines that did not parse (the fallback's).
    pub bad_lines: usize,
    /// Per node, what `tcp_info` says of the app's connections; empty on the fallback.
    pub tcp: Vec<NodeTcp>,
}

/// This pod's established connections to each of `nodes` (host names resolved), the
/// sidecar's own excluded: from netlink sock_diag with a kernel-side filter on the nodes'
/// addresses (with `tcp_info`), else from `/proc/net/tcp{,6}`. `None` when neither is there.
pub async fn pod_connections(nodes: &[HostPort]) -> Option<PodView> {
    let mut resolved: Vec<(String, Vec<SocketAddr>)> = Vec::with_capacity(nodes.len());
    for addr in nodes {
        let ips = crate::probe::resolve(addr).await.unwrap_or_default();
        resolved.push((addr.to_string(), ips));
    }
    let all: Vec<SocketAddr> = resolved.iter().flat_map(|(_, ips)| ips.clone()).collect();
    // Both ways make the kernel look at sockets: blocking work, kept off the threads that
    // answer probes.
    tokio::task::spawn_blocking(move || {
        let own = own_socket_inodes(Path::new("/proc/self/fd"));
        match crate::sockdiag::dump(&all) {
            Ok(conns) => Some(from_sock_diag(&resolved, &conns, &own)),
            Err(_) => {
                let counts = count_in_namespace(Path::new("/proc/net"), &all, &own)?;
                let per_node = resolved
                    .iter()
                    .map(|(node, ips)| (node.clone(), counts.to_any(ips)))
                    .collect();
                Some(PodView {
                    per_node,
                    bad_lines: counts.bad_lines,
                    tcp: vec![],
                })
            }
        }
    })
    .await
    .ok()?
}

fn from_sock_diag(
    resolved: &[(String, Vec<SocketAddr>)],
    conns: &[crate::sockdiag::Conn],
    own: &HashSet<u64>,
) -> PodView {
    let mut view = PodView::default();
    for (node, ips) in resolved {
        let ips: Vec<SocketAddr> = ips.iter().map(|a| canonical_addr(*a)).collect();
        let mine: Vec<&crate::sockdiag::Conn> = conns
            .iter()
            .filter(|c| !own.contains(&c.inode) && ips.contains(&canonical_addr(c.remote)))
            .collect();
        view.per_node.push((node.clone(), mine.len() as u64));
        if !mine.is_empty() {
            view.tcp.push(NodeTcp {
                node: node.clone(),
                rtt: mine.iter().map(|c| c.rtt).sum::<Duration>() / mine.len() as u32,
                idle_max: mine.iter().map(|c| c.idle).max().unwrap_or_default(),
                sockets: mine.iter().map(|c| (c.inode, c.retransmits)).collect(),
            });
        }
    }
    view
}

/// Counts the pod's connections every interval; a rise of the pod's resets is an event.
pub async fn watch(
    health: health::Rx,
    metrics: Arc<Metrics>,
    settings: Settings,
    events: Option<crate::events::EventLog>,
) {
    let mut resets_before: Option<u64> = None;
    loop {
        let nodes: Vec<(HostPort, Role)> = health
            .borrow()
            .nodes
            .iter()
            .map(|n| (n.addr.clone(), n.role))
            .collect();
        if !nodes.is_empty() {
            let addrs: Vec<HostPort> = nodes.iter().map(|(a, _)| a.clone()).collect();
            let Some(view) = pod_connections(&addrs).await else {
                return;
            };
            let primaries = nodes.iter().filter(|(_, r)| *r == Role::Primary).count();
            let ceiling = settings.ceiling(primaries as u64, nodes.len() as u64);
            metrics.pool.record_counts(&view.per_node, ceiling);
            metrics.pool.record_tcp(&view.tcp);
            metrics.record_parse_errors(ParseSource::ProcNetTcp, view.bad_lines as u64);
        }
        let resets = tokio::task::spawn_blocking(|| crate::tcpstats::read(Path::new("/proc/net")))
            .await
            .unwrap_or_default();
        metrics.pool.record_tcp_resets(&resets);
        let estab = resets
            .iter()
            .find(|(k, _)| *k == "estab_resets")
            .map(|r| r.1);
        if let (Some(now), Some(before), Some(e)) = (estab, resets_before, &events)
            && now > before
        {
            e.push(
                crate::events::Kind::PodResets,
                None,
                format!("+{}", now - before),
            );
        }
        resets_before = estab.or(resets_before);
        tokio::time::sleep(settings.interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:C350 0100007F:1A0B 01 00000000:00000000 00:00000000 00000000  1000        0 1002 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:C351 0100007F:1A0B 01 00000000:00000000 00:00000000 00000000  1000        0 1003 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:C352 0100007F:1A0C 06 00000000:00000000 00:00000000 00000000  1000        0 0 1 0000000000000000 20 4 30 10 -1
   4: 0A00000A:C353 0B00000A:18EB 01 00000000:00000000 00:00000000 00000000  1000        0 1004 1 0000000000000000 20 4 30 10 -1
";

    /// Every socket line of a table, and how many did not parse.
    fn parse_table(text: &str) -> (Vec<Socket>, usize) {
        let lines = text.lines().skip(1).filter(|l| !l.trim().is_empty());
        let (ok, bad): (Vec<_>, Vec<_>) = lines.map(parse_line).partition(Result::is_ok);
        (ok.into_iter().map(Result::unwrap).collect(), bad.len())
    }

    #[test]
    fn parses_ipv4_lines() {
        let (s, errors) = parse_table(TCP);
        assert_eq!(errors, 0);
        assert_eq!(s.len(), 5);
        assert_eq!(s[0].local, "127.0.0.1:8080".parse().unwrap());
        assert!(!s[0].established);
        assert_eq!(s[1].remote, "127.0.0.1:6667".parse().unwrap());
        assert!(s[1].established);
        assert_eq!(s[1].inode, 1002);
        assert_eq!(s[4].remote, "10.0.0.11:6379".parse().unwrap());
    }

    #[test]
    fn parses_ipv6_and_mapped_ipv4() {
        let text = "header\n   0: 00000000000000000000000001000000:1F90 0000000000000000FFFF00000100007F:1A0B 01 0:0 0:0 0 0 0 77 1\n";
        let (s, errors) = parse_table(text);
        assert_eq!(errors, 0);
        assert_eq!(s[0].local.ip(), "::1".parse::<IpAddr>().unwrap());
        assert_eq!(
            s[0].remote,
            "127.0.0.1:6667".parse().unwrap(),
            "mapped IPv4 becomes IPv4"
        );
    }

    #[test]
    fn malformed_lines_are_counted_not_fatal() {
        let text = "header\n garbage\n   0: 0100007F:ZZZZ 0100007F:1A0B 01 0 0 0 0 0 5 1\n   1: 0100007F:1F90 0100007F:1A0B 01 0 0 0 0 0 x 1\n   2: 0100007F:1F90 01007F:1A0B 01 0 0 0 0 0 9 1\n";
        let (s, errors) = parse_table(text);
        assert!(s.is_empty());
        assert_eq!(errors, 4);
    }

    #[test]
    fn streams_both_tables() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tcp"), TCP).unwrap();
        std::fs::write(
            dir.path().join("tcp6"),
            "header\n   0: 0000000000000000FFFF00000100007F:C360 0000000000000000FFFF00000100007F:1A0B 01 0:0 0:0 0 0 0 2001 1\n bad\n",
        )
        .unwrap();
        let node: SocketAddr = "127.0.0.1:6667".parse().unwrap();
        let counts = count_in_namespace(dir.path(), &[node], &HashSet::from([1003])).unwrap();
        assert_eq!(
            counts.to_any(&[node]),
            2,
            "1002 over IPv4 and 2001 over IPv6; 1003 is our own"
        );
        assert_eq!(counts.bad_lines, 1);
        assert!(count_in_namespace(&dir.path().join("nope"), &[node], &HashSet::new()).is_none());
    }

    #[test]
    fn ceiling_follows_go_redis() {
        // The seed: 1000 per node, 3 primaries, reads from replicas: 6 nodes.
        let seed = Settings {
            interval: Duration::from_secs(15),
            pool_size: Some(1000),
            max_override: None,
            reads_from_replicas: true,
        };
        let pod = |s: Settings| s.ceiling(3, 6).map(|c| c.pod);
        assert_eq!(pod(seed), Some(6000));
        let primaries_only = Settings {
            reads_from_replicas: false,
            ..seed
        };
        assert_eq!(pod(primaries_only), Some(3000));
        let overridden = Settings {
            max_override: Some(600),
            pool_size: None,
            ..seed
        };
        assert_eq!(overridden.ceiling(3, 6).map(|c| c.per_node), Some(100));
    }

    #[test]
    fn own_inodes_of_this_process() {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd())).unwrap();
        // "socket:[12345]"
        let inode: u64 = link
            .to_string_lossy()
            .trim_start_matches("socket:[")
            .trim_end_matches(']')
            .parse()
            .unwrap();
        let own = own_socket_inodes(Path::new("/proc/self/fd"));
        assert!(own.contains(&inode), "{inode} not in {own:?}");
        drop(listener);
    }
}
