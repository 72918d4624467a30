//! The network lab (`support::netns`): the sidecar and an app stand-in in a pod namespace, the
//! nodes behind a router namespace that makes real network faults.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::netns::Lab;
use support::{Cluster, Options, Sidecar, ready_until, sample, with_vars};

async fn lab_cluster(lab: &Lab) -> Cluster {
    Cluster::launch(Options {
        netns: Some(lab.srv.clone()),
        ..Options::default()
    })
    .await
}

/// The sidecar's settings in the lab: the nodes' certificates name `localhost`.
fn lab_env(cluster: &Cluster, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let env = with_vars(
        cluster.connection_env(),
        &[("REDIS_TLS_SERVER_NAME", "localhost")],
    );
    with_vars(env, extra)
}

/// A middlebox forgets flows idle for over 4 s and resets their next packet. The canary learns
/// the cut age; the app stand-in (redis-py's cluster client) left idle past it meets "connection
/// reset by peer" on its next command (in redis-py's TLS wording, "Connection closed by
/// server"), and the pod's reset counters rise; readiness never flips
/// (the health loop's connections carry a PING every second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_cut_is_learned_and_the_app_meets_it() {
    let lab = Lab::new();
    let cluster = lab_cluster(&lab).await;
    lab.idle_cut(4);
    let env = lab_env(
        &cluster,
        &[
            ("PROBE_INTERVAL", "1s"),
            ("PROBE_IDLE_CANARY", "6s"),
            ("PROBE_POOL_INTERVAL", "1s"),
        ],
    );
    let sidecar = Sidecar::spawn_in_pod(&lab.pod, &env).await;
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(30))
        .await;

    // The app: pools filled, idle for 6 s, used again.
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        python.exists(),
        "no {} (run scripts/install-deps)",
        python.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/idle_pool.py");
    // The pod's counters are read from the first check on; a labelled family appears with
    // its first series, so wait for it rather than compare with nothing.
    let resets_before =
        support::eventually(Duration::from_secs(30), "pod TCP counters", || async {
            let m = sidecar.metrics().await;
            sample(&m, RESETS).ok_or(m)
        })
        .await;
    let mut app = lab.command(&lab.pod, &python);
    app.arg(&script)
        .args([
            support::netns::SRV_IP,
            &cluster.nodes[0].port.to_string(),
            &cluster.password,
        ])
        .arg(&cluster.pki.ca)
        .arg("6");
    let app = tokio::task::spawn_blocking(move || app.output().unwrap());
    // While the app's pool idles, the sidecar sees its connections through netlink sock_diag:
    // their idle age, round trip and retransmissions, per node.
    let idle_seen = {
        let addr = sidecar.addr;
        let ns = lab.pod.clone();
        tokio::spawn(async move {
            let mut most = 0.0f64;
            let until = Instant::now() + Duration::from_secs(20);
            while Instant::now() < until {
                let m = support::get_in(&ns, addr, "/metrics").await.1;
                for l in m
                    .lines()
                    .filter(|l| l.starts_with("redis_pool_idle_seconds{"))
                {
                    let v: f64 = l
                        .rsplit(' ')
                        .next()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0.0);
                    most = most.max(v);
                }
                if most >= 3.0
                    && m.contains("redis_pool_rtt_seconds{")
                    && m.contains("redis_pool_retransmits_total{")
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            most
        })
    };

    ready_until(&sidecar, Duration::from_secs(120), |m| {
        m.contains("result=\"survived\"")
            && m.lines().any(|l| {
                l.starts_with("redis_idle_cut_seconds{")
                    && l.rsplit(' ')
                        .next()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(|v| (4.0..=6.5).contains(&v))
            })
    })
    .await;
    let out = app.await.unwrap();
    let idle = idle_seen.await.unwrap();
    assert!(
        idle >= 3.0,
        "the app's idle connections were not seen idle: {idle}"
    );
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    // Over TLS, redis-py words the reset as "Connection closed by server" (plain text:
    // "Connection reset by peer"); the kernel's reset counter below says which it was.
    let met = said.to_lowercase();
    assert!(
        said.contains("error ConnectionError")
            && (met.contains("reset by peer") || met.contains("closed by server")),
        "the app did not meet the reset:\n{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = sidecar.metrics().await;
    assert!(
        m.contains("result=\"cut\"") && m.contains("result=\"survived\""),
        "{m}"
    );
    support::eventually(Duration::from_secs(10), "pod resets rise", || async {
        let now = sample(&sidecar.metrics().await, RESETS).unwrap_or(0.0);
        support::holds(now > resets_before, || format!("{resets_before} -> {now}"))
    })
    .await;
    let logs = sidecar.logs();
    assert!(
        logs.contains("an idle connection to the node was cut"),
        "{logs}"
    );
    assert!(!logs.contains("circuit breaker opened"), "{logs}");

    // `diagnose` in the same pod reads the learned cut from the sidecar and finds the app's
    // idle time (go-redis's 30 minutes) above it.
    let diag_env = with_vars(
        env.clone(),
        &[
            ("REDIS_CONN_MAX_IDLE_TIME", "30m".to_string()),
            ("PROBE_LISTEN", format!("127.0.0.1:{}", sidecar.addr.port())),
        ],
    );
    let (code, report) =
        support::run_binary(Some(&lab.pod), &diag_env, &["diagnose", "--duration", "1s"]);
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("idle_above_cut"), "{report}");
    // The app's resets are a burst in the sidecar's event log, which diagnose lines up with the
    // events before it (none from the servers: the path cut them).
    assert!(report.contains(" resets at "), "{report}");
    assert!(!report.contains(&cluster.password), "{report}");
    sidecar.stop().await;
}

/// The pod's count of established connections it reset or had reset.
const RESETS: &str = "redis_pod_tcp_resets_total{kind=\"estab_resets\"}";

/// Packets to one primary vanish (a black hole): its attempts time out (`timeout`, never
/// `connection_refused`), and with the node alive to the rest of the cluster there is no
/// failover, so the pod turns unready after the failure threshold and ready again when the
/// path comes back. Then the path resets every established flow: `connection_reset`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_is_a_timeout() {
    let lab = Lab::new();
    let cluster = lab_cluster(&lab).await;
    let env = lab_env(
        &cluster,
        &[("PROBE_INTERVAL", "1s"), ("PROBE_IDLE_CANARY", "0")],
    );
    let sidecar = Sidecar::spawn_in_pod(&lab.pod, &env).await;
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(30))
        .await;
    let primary = cluster.primaries()[0];
    lab.black_hole(cluster.nodes[primary].port);
    let (took, body) = sidecar
        .wait_status("/readyz?verbose", 503, Duration::from_secs(60))
        .await;
    assert!(body.contains("timeout"), "{body}");
    let m = sidecar.metrics().await;
    assert_eq!(
        sample(
            &m,
            "redis_health_check_attempt_failures_total{reason=\"connection_refused\"}"
        ),
        Some(0.0),
        "{m}"
    );
    // The failure threshold (3) of failed checks, each of 3 attempts that time out (2 s):
    // at least 18 s, less the jitter of the intervals between them.
    assert!(took >= Duration::from_secs(15), "{took:?}");
    let timeouts = sample(&m, "redis_health_check_failed_total{reason=\"timeout\"}").unwrap_or(0.0);
    assert!(timeouts >= 3.0, "{timeouts} failed checks before 503:\n{m}");
    // No failover: the node is alive to the rest of the cluster.
    assert!(
        cluster.primaries().contains(&primary),
        "the primary was failed over"
    );
    lab.clear();
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(60))
        .await;

    // Every established flow reset by the path: connection_reset, and back when it stops.
    lab.reset_flows();
    support::wait_reason(&sidecar, "connection_reset", Duration::from_secs(60)).await;
    lab.clear();
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(60))
        .await;
    sidecar.stop().await;
}

/// 200 ms of round trip (a proxy in front of every node holds each chunk 100 ms each way) and
/// 5 % of packets lost each way (nftables `numgen random`), at the default timeouts (a check
/// every 2 s): TCP retransmits within the attempt timeout and readiness holds through 8 checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_and_loss_do_not_flip_readiness() {
    let lab = Lab::new();
    let cluster = Cluster::launch(Options {
        netns: Some(lab.srv.clone()),
        latency: Some(Duration::from_millis(100)),
        ..Options::default()
    })
    .await;
    let env = lab_env(
        &cluster,
        &[("PROBE_INTERVAL", "2s"), ("PROBE_IDLE_CANARY", "0")],
    );
    let sidecar = Sidecar::spawn_in_pod(&lab.pod, &env).await;
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(30))
        .await;
    lab.loss(5);
    let checks = |m: &str| sample(m, "redis_health_checks_total").unwrap_or(0.0);
    let m = sidecar.metrics().await;
    let pings: Vec<f64> = m
        .lines()
        .filter(|l| l.starts_with("redis_node_ping_seconds{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    assert_eq!(pings.len(), 6, "a PING time per node:\n{m}");
    let fastest = pings.iter().copied().fold(f64::INFINITY, f64::min);
    assert!(fastest >= 0.2, "no latency added: {fastest} s");
    let start = checks(&sidecar.metrics().await);
    ready_until(&sidecar, Duration::from_secs(90), |m| {
        checks(m) >= start + 8.0
    })
    .await;
    sidecar.stop().await;
}
