//! Replays the seed's incident against a local 6-node TLS + AUTH cluster, with redis-probe at
//! its default settings, and prints what happened as a table.
//!
//! ```text
//! cargo run --release --example incident_replay              # 3 min of resets, then the rest
//! cargo run --release --example incident_replay -- 60        # 60 s of resets
//! cargo run --release --example incident_replay -- 60 --print-logs   # and every log line
//! ```
//!
//! Timeline:
//! 1. **Intermittent resets**: every 2-8 s the proxy in front of a random node forgets its
//!    connections, so the next PING meets "connection reset by peer", as in the seed's logs.
//! 2. **Unplanned failover**: SIGKILL one primary; its replica is promoted. The killed node is
//!    started again and rejoins as a replica.
//! 3. **Full outage**: every node down for 30 s, then started again.
//!
//! `/readyz` is polled every 100 ms throughout. Needs `redis-server` and `redis-cli`
//! (scripts/install-deps).

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// Log lines, captured in memory to count them.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<String>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0
            .lock()
            .unwrap()
            .extend(text.lines().map(str::to_string));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Readiness as seen by a poller: every change, with its time.
#[derive(Default)]
struct Timeline {
    changes: Vec<(Instant, u16)>,
}

struct Phase {
    name: &'static str,
    start: Instant,
    end: Instant,
    logs: usize,
    dials: f64,
    commands: f64,
}

async fn counters(sidecar: &support::Sidecar) -> (f64, f64) {
    let m = sidecar.metrics().await;
    (
        support::sample(&m, "redis_probe_connection_attempts_total").unwrap_or(0.0),
        support::sample(&m, "redis_probe_commands_total").unwrap_or(0.0),
    )
}

/// Longest wait for a readiness change; the harness fails past it.
const WAIT_LIMIT: Duration = Duration::from_secs(600);

#[tokio::main]
async fn main() {
    let print_logs = std::env::args().any(|a| a == "--print-logs");
    let reset_secs: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(180);
    let logs = Captured::default();
    tracing_subscriber::fmt()
        .event_format(redis_probe::logging::JsonLine)
        .with_writer(logs.clone())
        .with_env_filter("info")
        .init();

    println!("starting a proxied 6-node TLS cluster...");
    let opts = support::Options {
        proxied: true,
        ..support::Options::default()
    };
    let mut cluster = support::Cluster::launch(opts).await;
    let mut env = cluster.connection_env();
    env.push(("PROBE_LISTEN".into(), "127.0.0.1:0".into()));
    let sidecar = Arc::new(support::Sidecar::start(support::config(&env)).await);
    sidecar.wait_status("/readyz", 200, WAIT_LIMIT).await;
    tokio::time::sleep(Duration::from_secs(6)).await;

    let timeline = Arc::new(Mutex::new(Timeline::default()));
    let poller = {
        let (sidecar, timeline) = (sidecar.clone(), timeline.clone());
        tokio::spawn(async move {
            let mut last = 200;
            loop {
                let s = sidecar.get("/readyz").await.0;
                if s != last {
                    timeline.lock().unwrap().changes.push((Instant::now(), s));
                    last = s;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut phases: Vec<Phase> = vec![];
    let begin =
        |name: &'static str, c: (f64, f64)| (name, Instant::now(), logs.0.lock().unwrap().len(), c);
    let finish =
        |p: (&'static str, Instant, usize, (f64, f64)), c: (f64, f64), logs: &Captured| Phase {
            name: p.0,
            start: p.1,
            end: Instant::now(),
            logs: logs.0.lock().unwrap().len() - p.2,
            dials: c.0 - p.3.0,
            commands: c.1 - p.3.1,
        };

    // 1. Intermittent resets.
    println!("phase 1: intermittent connection resets for {reset_secs} s");
    let p = begin("intermittent resets", counters(&sidecar).await);
    let mut resets = 0;
    while p.1.elapsed() < Duration::from_secs(reset_secs) {
        let pause = Duration::from_millis(2000 + (rand::random::<u64>() % 6000));
        tokio::time::sleep(pause).await;
        let node = rand::random::<u64>() as usize % cluster.proxies.len();
        support::Fault::ResetNode(node).apply(&mut cluster, None);
        resets += 1;
    }
    phases.push(finish(p, counters(&sidecar).await, &logs));

    // 2. Unplanned failover.
    println!("phase 2: unplanned failover");
    let p = begin("unplanned failover", counters(&sidecar).await);
    let primary = cluster.primaries()[0];
    support::Fault::Kill(primary).apply(&mut cluster, None);
    let killed = Instant::now();
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.wait_for(Duration::from_secs(60), "the cluster recovers", |c| {
            c.running_nodes_ok() && c.primaries().len() == 3
        });
        let promoted = killed.elapsed();
        support::Fault::Start(primary).apply(&mut cluster, None);
        cluster.wait_healthy(Duration::from_secs(120));
        (cluster, promoted)
    });
    let (cluster, promoted) = cluster.await.unwrap();
    tokio::time::sleep(Duration::from_secs(12)).await;
    phases.push(finish(p, counters(&sidecar).await, &logs));

    // 3. Full outage for 30 s.
    println!("phase 3: full outage for 30 s");
    let p = begin("30 s full outage", counters(&sidecar).await);
    let mut cluster = cluster;
    support::Fault::KillAll.apply(&mut cluster, None);
    let outage = Instant::now();
    let detected = sidecar.wait_status("/readyz", 503, WAIT_LIMIT).await.0;
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(outage.elapsed())).await;
    let cluster = tokio::task::spawn_blocking(move || {
        support::Fault::RestartAll.apply(&mut cluster, None);
        cluster
    })
    .await
    .unwrap();
    let recovered = sidecar.wait_status("/readyz", 200, WAIT_LIMIT).await.0;
    tokio::time::sleep(Duration::from_secs(6)).await;
    phases.push(finish(p, counters(&sidecar).await, &logs));
    poller.abort();

    let m = sidecar.metrics().await;
    let tl = timeline.lock().unwrap();
    let outage_window = (outage, phases[2].end);
    let unready_in = |from: Instant, to: Instant| {
        tl.changes
            .iter()
            .filter(|(t, s)| *s == 503 && *t >= from && *t < to)
            .count()
    };
    let false_unready = unready_in(phases[0].start, outage_window.0);

    println!();
    println!(
        "| phase | length | /readyz 200->503 | log lines | connections opened | commands sent |"
    );
    println!("|---|---|---|---|---|---|");
    for p in &phases {
        println!(
            "| {} | {:.0} s | {} | {} | {} | {} |",
            p.name,
            (p.end - p.start).as_secs_f64(),
            unready_in(p.start, p.end),
            p.logs,
            p.dials,
            p.commands
        );
    }
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!("| resets injected | {resets} |");
    println!(
        "| attempts failed with connection_reset (absorbed by retries) | {} |",
        support::sample(
            &m,
            "redis_health_check_attempt_failures_total{reason=\"connection_reset\"}"
        )
        .unwrap_or(0.0)
    );
    println!("| false unready transitions (outside the full outage) | {false_unready} |");
    println!(
        "| failover: primary killed -> cluster healthy | {:.1} s |",
        promoted.as_secs_f64()
    );
    println!("| full outage -> 503 | {:.1} s |", detected.as_secs_f64());
    println!(
        "| cluster healthy again -> 200 | {:.1} s |",
        recovered.as_secs_f64()
    );
    println!("| real readiness changes (down, up) | 2 |");
    println!(
        "| log lines in the whole run | {} |",
        logs.0.lock().unwrap().len()
    );
    println!(
        "| connections held at the end | {} |",
        support::sample(&m, "redis_probe_connections").unwrap_or(0.0)
    );
    if print_logs {
        println!();
        for line in logs.0.lock().unwrap().iter() {
            println!("{line}");
        }
    }
    drop(cluster);
}
