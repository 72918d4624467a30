//! Topologies the sidecar must keep bounded, from real clusters and the binary: one with more
//! nodes than `PROBE_MAX_NODES`, and one whose node announces a new address again and again.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use support::proxy::ResetProxy;
use support::{Cluster, Options, Sidecar, sample, with_vars};

/// Every `node` label value in a scrape, whatever the family.
fn node_labels(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = &l[l.find("node=\"")? + 6..];
            Some(rest[..rest.find('"')?].to_string())
        })
        .collect()
}

/// Scrapes until `done` holds, or fails after `limit` with the last scrape.
async fn scrape_until(
    sidecar: &Sidecar,
    limit: Duration,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    support::eventually(limit, what, || async {
        let m = sidecar.metrics().await;
        if done(&m) {
            Ok(m)
        } else {
            Err(format!("nodes {:?} in\n{m}", node_labels(&m)))
        }
    })
    .await
}

/// A new cluster, and the binary with `vars` on top of the patient settings, ready.
async fn ready_sidecar(vars: &[(&str, &str)]) -> (Cluster, Sidecar) {
    let cluster = Cluster::launch(Options::default()).await;
    let sidecar = Sidecar::spawn(&with_vars(cluster.patient_env(), vars)).await;
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(30))
        .await;
    (cluster, sidecar)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topology_over_the_cap_keeps_whole_shards_up_to_it() {
    let (cluster, sidecar) =
        ready_sidecar(&[("PROBE_MAX_NODES", "4"), ("PROBE_INFO_INTERVAL", "1s")]).await;
    let m = scrape_until(&sidecar, Duration::from_secs(30), "5 checks", |m| {
        sample(m, "redis_health_checks_total").unwrap_or(0.0) >= 5.0
    })
    .await;

    let followed = node_labels(&m);
    assert_eq!(followed.len(), 4, "{followed:?} in\n{m}");
    assert_eq!(sample(&m, "redis_probe_connections"), Some(4.0), "{m}");
    // Whole shards: a primary is followed with its replica, or not at all.
    for p in cluster.primaries() {
        let r = cluster.replica_of(p);
        assert_eq!(
            followed.contains(&cluster.nodes[p].addr()),
            followed.contains(&cluster.nodes[r].addr()),
            "shard of node {p} cut in half: {followed:?}"
        );
    }
    let logs = sidecar.logs();
    assert_eq!(
        logs.matches("topology has more nodes than redis-probe follows")
            .count(),
        1,
        "one line, not one per check:\n{logs}"
    );
    assert!(logs.contains("\"dropped\":2"), "{logs}");
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_keeps_moving_leaves_no_series_or_connection_behind() {
    // Per-node series from INFO and the pod's socket view are refreshed every second, so a
    // departed node's series must be gone within seconds whichever family holds them.
    let (cluster, sidecar) =
        ready_sidecar(&[("PROBE_INFO_INTERVAL", "1s"), ("PROBE_POOL_INTERVAL", "1s")]).await;
    let moving = cluster.replica_of(cluster.primaries()[0]);
    let upstream = SocketAddr::from(([127, 0, 0, 1], cluster.nodes[moving].port));
    let others: BTreeSet<String> = (0..cluster.nodes.len())
        .filter(|i| *i != moving)
        .map(|i| cluster.nodes[i].addr())
        .collect();
    let mut old = cluster.nodes[moving].addr();
    let mut current: Option<ResetProxy> = None;
    for round in 0..10 {
        // The node announces a new port, served by a new forwarder to the same server.
        let proxy = ResetProxy::start(upstream).await;
        let new = format!("127.0.0.1:{}", proxy.addr.port());
        let port = proxy.addr.port().to_string();
        let out = cluster.cli(
            moving,
            &["CONFIG", "SET", "cluster-announce-tls-port", &port],
        );
        assert!(out.contains("OK"), "CONFIG SET: {out}");
        let what = format!("round {round}: {old} replaced by {new}");
        let m = scrape_until(&sidecar, Duration::from_secs(30), &what, |m| {
            let labels = node_labels(m);
            sample(m, &format!("redis_node_up{{node=\"{new}\"}}")) == Some(1.0)
                && !labels.contains(&old)
                && labels.len() == 6
        })
        .await;
        let labels = node_labels(&m);
        assert!(labels.is_superset(&others), "{labels:?}");
        assert_eq!(sample(&m, "redis_probe_connections"), Some(6.0), "{m}");
        // The sidecar closed its connection through the forwarder of the address before.
        if let Some(before) = current.replace(proxy) {
            support::eventually(
                Duration::from_secs(10),
                &format!("round {round}: nothing uses the address before"),
                || {
                    std::future::ready(support::holds(before.open() == 0, || {
                        before.open().to_string()
                    }))
                },
            )
            .await;
        }
        old = new;
    }
    assert_eq!(sidecar.get("/readyz").await.0, 200);
    sidecar.stop().await;
}
