//! Fleet simulation: N redis-probe processes (100 by default) against one local TLS + AUTH
//! cluster, as N pods of one service would run them, all with the default settings.
//!
//! ```text
//! benches/fleet.sh                  # N=100, 3 runs, outage held 90 s; medians printed
//! benches/fleet.sh 50 1 60          # N, runs, outage hold in seconds
//! ```
//!
//! Each run starts three fleets of N, one after the other, all started at once (as after a
//! rollout or a node drain):
//! 1. defaults: the connections and Redis CPU they add, the commands each node receives, the
//!    PING arrivals per 100 ms on one node (`MONITOR`), the sidecars' own CPU and RSS; then a
//!    full outage held for the hold time and the reconnection after it: new connections per
//!    second on Redis (each one a TLS handshake and an AUTH) and the time until every sidecar
//!    is ready again;
//! 2. `PROBE_JITTER=0`: the PING arrivals again, without jitter (the herd);
//! 3. `PROBE_OPEN_DURATION_MAX=5s` (the open duration never grows): the same outage and
//!    reconnection, without the open-duration backoff.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::{Cluster, Options, Sidecar, sample};

/// After start: every sidecar's first check, first INFO read and a few intervals.
const SETTLE: Duration = Duration::from_secs(20);
/// Redis and sidecar CPU are read over this window.
const WINDOW: Duration = Duration::from_secs(30);
/// PING arrivals are recorded over this window.
const MONITOR_WINDOW: Duration = Duration::from_secs(30);
/// Longest wait for the whole fleet to turn ready or unready.
const LIMIT: Duration = Duration::from_secs(180);
/// Commands whose per-node rates are reported.
const COMMANDS: [&str; 5] = [
    "ping",
    "cluster|shards",
    "cluster|slots",
    "info",
    "cluster|info",
];

type Info = HashMap<String, String>;

/// `INFO clients stats cpu commandstats` of node `i`, or `None` while it is down.
fn info(c: &Cluster, i: usize) -> Option<Info> {
    let out = c.cli_output(i, &["INFO", "clients", "stats", "cpu", "commandstats"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let m: Info = redis_probe::probe::info::parse_info(&text)
        .0
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    m.contains_key("total_connections_received").then_some(m)
}

fn num(m: &Info, k: &str) -> f64 {
    m.get(k).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

fn cpu_seconds(m: &Info) -> f64 {
    num(m, "used_cpu_sys") + num(m, "used_cpu_user")
}

/// `cmdstat_ping:calls=12,usec=...` -> 12.
fn calls(m: &Info, cmd: &str) -> f64 {
    m.get(&format!("cmdstat_{cmd}"))
        .and_then(|v| v.split(',').find_map(|kv| kv.strip_prefix("calls=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0)
}

fn infos(c: &Cluster) -> Vec<Info> {
    (0..c.nodes.len())
        .map(|i| info(c, i).expect("node answers INFO"))
        .collect()
}

fn proc_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / ticks
}

fn proc_rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// A row of a table comparing two settings.
fn row(name: &str, left: f64, right: f64) {
    println!("| {name} | {left:.1} | {right:.1} |");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        0.0
    } else {
        v[(v.len() - 1) / 2]
    }
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        0.0
    } else {
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
}

struct Fleet {
    sidecars: Vec<Sidecar>,
}

impl Fleet {
    /// Starts `n` sidecars at once and waits until each answers 200.
    async fn start(bin: &str, cluster: &Cluster, n: usize, extra: &[(&str, &str)]) -> Fleet {
        let env = support::with_vars(cluster.connection_env(), &[("PROBE_LOG_LEVEL", "warn")]);
        let env = support::with_vars(env, extra);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (bin, env) = (bin.to_string(), env.clone());
            set.spawn(async move { Sidecar::spawn_binary(&bin, &env).await });
        }
        let sidecars = set.join_all().await;
        for s in &sidecars {
            s.wait_status("/readyz", 200, LIMIT).await;
        }
        Fleet { sidecars }
    }

    fn pids(&self) -> Vec<u32> {
        self.sidecars.iter().filter_map(Sidecar::pid).collect()
    }

    /// Sum of a metric over the fleet.
    async fn total(&self, series: &str) -> f64 {
        let mut t = 0.0;
        for s in &self.sidecars {
            t += sample(&s.metrics().await, series).unwrap_or(0.0);
        }
        t
    }

    /// Waits until every sidecar answers `status`; returns when each did, from `since`.
    async fn wait_all(&self, status: u16, since: Instant) -> Vec<f64> {
        let mut when: Vec<Option<f64>> = vec![None; self.sidecars.len()];
        while when.iter().any(Option::is_none) {
            assert!(
                since.elapsed() < LIMIT,
                "the fleet did not all turn {status}"
            );
            for (i, s) in self.sidecars.iter().enumerate() {
                if when[i].is_none() && s.get("/readyz").await.0 == status {
                    when[i] = Some(since.elapsed().as_secs_f64());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        when.into_iter().flatten().collect()
    }

    async fn stop(self) {
        for s in self.sidecars {
            s.stop().await;
        }
    }
}

/// What the steady fleet costs, over `WINDOW`.
#[derive(Default)]
struct Steady {
    /// Connections the fleet adds, per node.
    conns_per_node: Vec<f64>,
    /// Redis CPU over all nodes, in % of one core, above the idle cluster.
    redis_cpu_pct: f64,
    /// Commands per second on the busiest node, and over all nodes, by command.
    commands: BTreeMap<&'static str, (f64, f64)>,
    /// Per sidecar: CPU ms per minute, RSS KiB (medians).
    sidecar_cpu_ms_min: f64,
    sidecar_rss_kib: f64,
}

async fn steady(cluster: &Cluster, fleet: &Fleet, idle: &[Info], idle_cpu: f64) -> Steady {
    let pids = fleet.pids();
    let cpu0: Vec<f64> = pids.iter().map(|p| proc_cpu_seconds(*p)).collect();
    let before = infos(cluster);
    let t = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let after = infos(cluster);
    let secs = t.elapsed().as_secs_f64();
    let cpu1: Vec<f64> = pids.iter().map(|p| proc_cpu_seconds(*p)).collect();
    let mut s = Steady {
        conns_per_node: after
            .iter()
            .zip(idle)
            .map(|(a, i)| num(a, "connected_clients") - num(i, "connected_clients"))
            .collect(),
        ..Default::default()
    };
    let cpu: f64 = after
        .iter()
        .zip(&before)
        .map(|(a, b)| cpu_seconds(a) - cpu_seconds(b))
        .sum();
    s.redis_cpu_pct = (cpu / secs - idle_cpu) * 100.0;
    for cmd in COMMANDS {
        // Our own INFO read of each node counts once.
        let own = if cmd == "info" { 1.0 } else { 0.0 };
        let rates: Vec<f64> = after
            .iter()
            .zip(&before)
            .map(|(a, b)| (calls(a, cmd) - calls(b, cmd) - own) / secs)
            .collect();
        let max = rates.iter().copied().fold(0.0, f64::max);
        s.commands.insert(cmd, (max, rates.iter().sum()));
    }
    s.sidecar_cpu_ms_min = median(
        cpu1.iter()
            .zip(&cpu0)
            .map(|(a, b)| (a - b) * 1000.0 * 60.0 / secs)
            .collect(),
    );
    s.sidecar_rss_kib = median(pids.iter().map(|p| proc_rss_kib(*p)).collect());
    s
}

/// PING arrivals on node `i` per 100 ms bucket over `MONITOR_WINDOW`.
#[derive(Default)]
struct Arrivals {
    mean: f64,
    p99: f64,
    max: f64,
    empty_pct: f64,
    max_per_second: f64,
}

fn arrivals(cluster: &Cluster, i: usize) -> Arrivals {
    let mut cmd = cluster.cli_command(i, &["MONITOR"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    support::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().expect("redis-cli MONITOR");
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        // 1795746570.471685 [0 127.0.0.1:40112] "PING"
        std::io::BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.ends_with("\"PING\""))
            .filter_map(|l| l.split_whitespace().next()?.parse::<f64>().ok())
            .collect::<Vec<f64>>()
    });
    std::thread::sleep(MONITOR_WINDOW);
    let _ = child.kill();
    let _ = child.wait();
    let ts = reader.join().unwrap();
    let Some(start) = ts.first().copied() else {
        return Arrivals::default();
    };
    let n = (MONITOR_WINDOW.as_secs_f64() * 10.0) as usize - 10;
    let mut buckets = vec![0.0; n];
    for t in &ts {
        if let Some(b) = buckets.get_mut(((t - start) * 10.0) as usize) {
            *b += 1.0;
        }
    }
    let per_second = buckets
        .windows(10)
        .map(|w| w.iter().sum::<f64>())
        .fold(0.0, f64::max);
    Arrivals {
        mean: buckets.iter().sum::<f64>() / n as f64,
        p99: percentile(buckets.clone(), 0.99),
        max: buckets.iter().copied().fold(0.0, f64::max),
        empty_pct: buckets.iter().filter(|b| **b == 0.0).count() as f64 * 100.0 / n as f64,
        max_per_second: per_second,
    }
}

/// A full outage held for `hold`, then every node started again.
#[derive(Default)]
struct Storm {
    /// Connection attempts per sidecar per minute while Redis was down.
    dials_per_min: f64,
    /// The open duration the breakers had reached (sidecar 0).
    open_duration_s: f64,
    /// New connections on Redis (all nodes) per second after the restart: peak, total, and
    /// the shortest number of seconds that held 90 % of them.
    peak_per_s: f64,
    total: f64,
    seconds_for_90pct: f64,
    /// Redis CPU (all nodes) from restart to the end of the reconnection, in CPU seconds.
    redis_cpu_s: f64,
    /// Nodes started -> each sidecar ready: median and last.
    ready_median_s: f64,
    ready_last_s: f64,
}

async fn outage(cluster: Cluster, fleet: &Fleet, hold: Duration) -> (Cluster, Storm) {
    let mut storm = Storm::default();
    let mut cluster = tokio::task::spawn_blocking(move || {
        let mut c = cluster;
        c.kill_all();
        c
    })
    .await
    .unwrap();
    let down = Instant::now();
    fleet.wait_all(503, down).await;
    let dials0 = fleet.total("redis_probe_connection_attempts_total").await;
    let t = Instant::now();
    tokio::time::sleep(hold.saturating_sub(down.elapsed())).await;
    let dials = fleet.total("redis_probe_connection_attempts_total").await - dials0;
    storm.dials_per_min = dials / fleet.sidecars.len() as f64 * 60.0 / t.elapsed().as_secs_f64();
    storm.open_duration_s = sample(
        &fleet.sidecars[0].metrics().await,
        "redis_circuit_breaker_open_duration_seconds",
    )
    .unwrap_or(0.0);

    for i in 0..cluster.nodes.len() {
        cluster.start_node(i);
    }
    let started = Instant::now();
    let cluster = Arc::new(cluster);
    let done = Arc::new(AtomicBool::new(false));
    // Counters start at zero with each restarted node; each reading is one connection of ours.
    let sampler = {
        let (c, done) = (cluster.clone(), done.clone());
        std::thread::spawn(move || {
            let n = c.nodes.len();
            let (mut conns, mut cpu) = (vec![0.0; n], vec![0.0; n]);
            let mut per_second = vec![];
            let mut next = Instant::now() + Duration::from_secs(1);
            while !done.load(Ordering::Acquire) {
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                next += Duration::from_secs(1);
                let mut new = 0.0;
                for i in 0..n {
                    if let Some(m) = info(&c, i) {
                        let total = num(&m, "total_connections_received");
                        new += (total - conns[i] - 1.0).max(0.0);
                        conns[i] = total;
                        cpu[i] = cpu_seconds(&m);
                    }
                }
                per_second.push(new);
            }
            (per_second, cpu.iter().sum::<f64>())
        })
    };
    let ready = fleet.wait_all(200, started).await;
    // A few more seconds, for connections that come after readiness.
    tokio::time::sleep(Duration::from_secs(5)).await;
    done.store(true, Ordering::Release);
    let (per_second, cpu) = sampler.join().unwrap();
    storm.peak_per_s = per_second.iter().copied().fold(0.0, f64::max);
    storm.total = per_second.iter().sum();
    let mut sorted = per_second.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let mut acc = 0.0;
    storm.seconds_for_90pct = sorted
        .iter()
        .take_while(|x| {
            let before = acc;
            acc += **x;
            before < 0.9 * storm.total
        })
        .count() as f64;
    storm.redis_cpu_s = cpu;
    storm.ready_median_s = median(ready.clone());
    storm.ready_last_s = ready.iter().copied().fold(0.0, f64::max);
    let cluster = Arc::try_unwrap(cluster).ok().expect("sampler ended");
    (cluster, storm)
}

struct Run {
    steady: Steady,
    jittered: Arrivals,
    herd: Arrivals,
    backoff: Storm,
    no_backoff: Storm,
}

#[tokio::main]
async fn main() {
    let args = support::numeric_args();
    let n = args.first().copied().unwrap_or(100) as usize;
    let runs = args.get(1).copied().unwrap_or(1);
    let hold = Duration::from_secs(args.get(2).copied().unwrap_or(90));
    let bin = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|examples| examples.parent())
        .map(|dir| dir.join("redis-probe"))
        .filter(|p| p.exists())
        .expect("build the binary first: cargo build --release --bin redis-probe");
    let bin = bin.to_str().unwrap().to_string();

    let mut results = vec![];
    for run in 1..=runs {
        let mut cluster = Cluster::launch(Options::default()).await;
        // The idle cluster: its own CPU (cluster bus) and clients.
        let idle = infos(&cluster);
        let t = Instant::now();
        tokio::time::sleep(WINDOW).await;
        let idle_after = infos(&cluster);
        let idle_cpu = idle_after
            .iter()
            .zip(&idle)
            .map(|(a, b)| cpu_seconds(a) - cpu_seconds(b))
            .sum::<f64>()
            / t.elapsed().as_secs_f64();

        eprintln!("run {run}: fleet of {n}, defaults");
        let fleet = Fleet::start(&bin, &cluster, n, &[]).await;
        tokio::time::sleep(SETTLE).await;
        let steady = steady(&cluster, &fleet, &idle, idle_cpu).await;
        let c = Arc::new(cluster);
        let jittered = {
            let c = c.clone();
            tokio::task::spawn_blocking(move || arrivals(&c, 0))
                .await
                .unwrap()
        };
        cluster = Arc::try_unwrap(c).ok().unwrap();
        eprintln!("run {run}: outage of {hold:?}, defaults");
        let (c, backoff) = outage(cluster, &fleet, hold).await;
        cluster = c;
        fleet.stop().await;
        cluster = tokio::task::spawn_blocking(move || {
            cluster.wait_healthy(LIMIT);
            cluster
        })
        .await
        .unwrap();

        eprintln!("run {run}: fleet of {n}, PROBE_JITTER=0");
        let fleet = Fleet::start(&bin, &cluster, n, &[("PROBE_JITTER", "0")]).await;
        tokio::time::sleep(SETTLE).await;
        let c = Arc::new(cluster);
        let herd = {
            let c = c.clone();
            tokio::task::spawn_blocking(move || arrivals(&c, 0))
                .await
                .unwrap()
        };
        cluster = Arc::try_unwrap(c).ok().unwrap();
        fleet.stop().await;

        eprintln!("run {run}: outage of {hold:?}, PROBE_OPEN_DURATION_MAX=5s");
        let fleet = Fleet::start(&bin, &cluster, n, &[("PROBE_OPEN_DURATION_MAX", "5s")]).await;
        tokio::time::sleep(SETTLE).await;
        let (c, no_backoff) = outage(cluster, &fleet, hold).await;
        fleet.stop().await;
        drop(c);
        let r = Run {
            steady,
            jittered,
            herd,
            backoff,
            no_backoff,
        };
        report(&format!("run {run}"), n, std::slice::from_ref(&r));
        results.push(r);
    }
    if runs > 1 {
        report(&format!("median of {runs} runs"), n, &results);
    }
}

/// Prints the tables, each figure the median over `runs`.
fn report(title: &str, n: usize, runs: &[Run]) {
    let m = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
    println!("\n## Fleet of {n} sidecars: {title}\n");
    println!("| steady, defaults | value |\n|---|---|");
    println!(
        "| connections added per node (min-max over nodes) | {:.0}-{:.0} |",
        m(&|r| r
            .steady
            .conns_per_node
            .iter()
            .copied()
            .fold(f64::MAX, f64::min)),
        m(&|r| r.steady.conns_per_node.iter().copied().fold(0.0, f64::max))
    );
    println!(
        "| Redis CPU added, all 6 nodes | {:.1} % of one core ({:.3} % per sidecar) |",
        m(&|r| r.steady.redis_cpu_pct),
        m(&|r| r.steady.redis_cpu_pct) / n as f64
    );
    for cmd in COMMANDS {
        println!(
            "| `{cmd}` per second: all nodes / busiest node | {:.1} / {:.1} |",
            m(&|r| r.steady.commands[cmd].1),
            m(&|r| r.steady.commands[cmd].0)
        );
    }
    println!(
        "| sidecar CPU (median) | {:.1} ms per minute |",
        m(&|r| r.steady.sidecar_cpu_ms_min)
    );
    println!(
        "| sidecar RSS (median) | {:.1} MiB |",
        m(&|r| r.steady.sidecar_rss_kib) / 1024.0
    );
    println!("\n| PINGs on one node per 100 ms | default jitter (0.2) | PROBE_JITTER=0 |");
    println!("|---|---|---|");
    let a = |name: &str, f: &dyn Fn(&Arrivals) -> f64| {
        row(name, m(&|r| f(&r.jittered)), m(&|r| f(&r.herd)))
    };
    a("mean", &|x| x.mean);
    a("p99", &|x| x.p99);
    a("max", &|x| x.max);
    a("empty buckets (%)", &|x| x.empty_pct);
    a("max in any 1 s", &|x| x.max_per_second);
    println!(
        "\n| full outage, then all nodes restarted | open duration 5 s doubling to 30 s (default) | PROBE_OPEN_DURATION_MAX=5s |"
    );
    println!("|---|---|---|");
    let s = |name: &str, f: &dyn Fn(&Storm) -> f64| {
        row(name, m(&|r| f(&r.backoff)), m(&|r| f(&r.no_backoff)))
    };
    s("open duration reached (s)", &|x| x.open_duration_s);
    s("dials per sidecar per minute while down", &|x| {
        x.dials_per_min
    });
    s("new Redis connections after restart, total", &|x| x.total);
    s("new connections, peak per second", &|x| x.peak_per_s);
    s("seconds holding 90 % of them", &|x| x.seconds_for_90pct);
    s("Redis CPU seconds, restart to all ready + 5 s", &|x| {
        x.redis_cpu_s
    });
    s("nodes started -> sidecar ready, median (s)", &|x| {
        x.ready_median_s
    });
    s("nodes started -> last sidecar ready (s)", &|x| {
        x.ready_last_s
    });
}
