//! Cluster mode disabled: a primary and its replica behind a primary endpoint (a proxy the
//! test points at the primary, as ElastiCache's DNS name follows it), a Sentinel, and the
//! default cluster mode pointed at a server without cluster support.

mod support;

use std::time::Duration;

use support::{Cluster, Options, Sidecar, wait_reason, with_vars};

const LIMIT: Duration = Duration::from_secs(20);

/// The roles swap (the old primary survives as a replica): the sidecar's connection, still to
/// the old primary, sees `role:slave` and fails as `not_primary` (the app's writes would fail
/// there); once the endpoint follows the new primary, the next dial reaches it and the pod is
/// ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_primary_is_not_ready_until_the_endpoint_follows() {
    let cluster = Cluster::launch(Options {
        cluster: false,
        replica: true,
        ..Options::default()
    })
    .await;
    let env = cluster.patient_env();
    assert!(env.contains(&("REDIS_CLUSTER_MODE".into(), "false".into())));
    let sidecar = Sidecar::spawn(&env).await;
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(30))
        .await;
    // INFO is read; a server outside cluster mode has no cluster view to export, not a 0.
    let m = support::eventually(LIMIT, "INFO read", || async {
        let m = sidecar.metrics().await;
        support::holds(m.contains("redis_max_clients{"), || m.clone()).map(|_| m)
    })
    .await;
    assert_eq!(support::sample(&m, "redis_cluster_state"), None, "{m}");
    assert_eq!(support::sample(&m, "redis_cluster_size"), None, "{m}");

    let new_primary = cluster.nodes[1].port.to_string();
    assert!(cluster.cli(1, &["REPLICAOF", "NO", "ONE"]).contains("OK"));
    assert!(
        cluster
            .cli(0, &["REPLICAOF", "127.0.0.1", &new_primary])
            .contains("OK")
    );
    wait_reason(&sidecar, "not_primary", LIMIT).await;
    sidecar
        .wait_log(
            "the server's role is slave, not master",
            Duration::from_secs(10),
        )
        .await;

    let endpoint = cluster.endpoint.as_ref().unwrap();
    endpoint.set_upstream(format!("127.0.0.1:{new_primary}").parse().unwrap());
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(20))
        .await;
    sidecar.stop().await;
}

/// The default `REDIS_CLUSTER_MODE=true` against a server without cluster support fails with
/// its own reason, and the detail says what to set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_against_a_standalone_server() {
    let server = Cluster::launch(Options::standalone()).await;
    let env = with_vars(server.env(), &[("REDIS_CLUSTER_MODE", "true")]);
    let sidecar = Sidecar::spawn(&env).await;
    wait_reason(&sidecar, "cluster_mode_disabled", LIMIT).await;
    sidecar
        .wait_log("set REDIS_CLUSTER_MODE=false", Duration::from_secs(10))
        .await;
    sidecar.stop().await;

    let out = support::binary_command(None, env.iter().cloned())
        .args(["diagnose", "--duration", "1s"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("] wrong_server: "), "{text}");
}

/// A Sentinel answers PING like a server; pointed at one, the sidecar says so (Redis names it
/// in `redis_mode`, Valkey in `server_mode`) and is never ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_is_never_ready() {
    sentinel_is_never_ready(support::Engine::suite()).await;
}

/// Valkey's Sentinel says `server_mode:sentinel` and no `redis_mode`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valkey_sentinel_is_never_ready() {
    sentinel_is_never_ready(support::Engine::Valkey9).await;
}

async fn sentinel_is_never_ready(engine: support::Engine) {
    let sentinel = support::Sentinel::start(engine);
    let mut env: Vec<(String, String)> = vec![
        ("REDIS_ADDRESS".into(), sentinel.addr()),
        ("REDIS_CLUSTER_MODE".into(), "false".into()),
        ("PROBE_LISTEN".into(), "127.0.0.1:0".into()),
        ("PROBE_INTERVAL".into(), "300ms".into()),
    ];
    env.extend(support::patient_timeouts());
    let sidecar = Sidecar::spawn(&env).await;
    // Never 200, from the first check until three more have failed as `sentinel`.
    support::eventually(LIMIT, "3 checks failed as sentinel", || async {
        let (status, body) = sidecar.get("/readyz?verbose").await;
        assert_ne!(status, 200, "a Sentinel was reported ready:\n{body}");
        let m = sidecar.metrics().await;
        let failed = support::sample(&m, "redis_health_check_failed_total{reason=\"sentinel\"}")
            .unwrap_or(0.0);
        support::holds(failed >= 3.0, || format!("{body}\n{m}"))
    })
    .await;
    wait_reason(&sidecar, "sentinel", LIMIT).await;
    sidecar
        .wait_log("the address is a Sentinel", Duration::from_secs(10))
        .await;
    sidecar.stop().await;
}
