//! Connection budget and cluster observability against a real cluster: the pod's connections
//! counted from /proc/net/tcp, INFO and CLUSTER INFO metrics following reality.

mod support;

use std::time::Duration;

use support::{Cluster, Options, Sidecar, sample};

/// Opens one TLS + AUTH connection from this process to each node index given.
async fn open_connections(
    cluster: &Cluster,
    nodes: impl IntoIterator<Item = usize>,
) -> Vec<redis::aio::MultiplexedConnection> {
    redis_probe::probe::tls::install_crypto_provider();
    let ca = std::fs::read(&cluster.pki.ca).unwrap();
    let mut conns = vec![];
    for i in nodes {
        let node = &cluster.nodes[i];
        let addr = redis::ConnectionAddr::TcpTls {
            host: "127.0.0.1".into(),
            port: node.public_port,
            insecure: false,
            tls_params: None,
        };
        let info = redis::IntoConnectionInfo::into_connection_info(addr)
            .unwrap()
            .set_redis_settings(
                redis::RedisConnectionInfo::default().set_password(&cluster.password),
            );
        let client = redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone()),
            },
        )
        .unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let _: String = redis::cmd("PING").query_async(&mut c).await.unwrap();
        conns.push(c);
    }
    conns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_usage_is_counted_from_the_pods_sockets() {
    let cluster = Cluster::launch(Options::default()).await;
    // Nothing here needs an attempt to time out; a loaded machine must not fail the dials.
    let env = support::with_vars(
        cluster.patient_env(),
        &[
            ("REDIS_POOL_SIZE", "10"),
            ("PROBE_POOL_INTERVAL", "200ms"),
            ("PROBE_INFO_INTERVAL", "500ms"),
        ],
    );
    // A separate process, as a sidecar is: this test's own connections are "the app's".
    let sidecar = Sidecar::spawn(&env).await;
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(30))
        .await;

    // go-redis: 10 per node x 3 primaries (no replica reads).
    assert_eq!(
        sidecar
            .wait_metric("redis_pool_max_conns", |v| v > 0.0, Duration::from_secs(10))
            .await,
        30.0
    );
    let m = sidecar.metrics().await;
    assert_eq!(sample(&m, "redis_pool_max_conns_per_node"), Some(10.0));
    // On this machine the replicas' replication links are "the pod's" too: one per replica is
    // the baseline, reached once every link is up (a link being made, a redis-cli of the
    // harness, may come and go). The sidecar's own 6 connections are never counted.
    let baseline = (cluster.nodes.len() - cluster.primaries().len()) as f64;
    sidecar
        .wait_metric(
            "redis_pool_current_conns",
            |v| v == baseline,
            Duration::from_secs(10),
        )
        .await;

    let conns = open_connections(&cluster, (0..7).map(|i| i % cluster.nodes.len())).await;
    sidecar
        .wait_metric(
            "redis_pool_current_conns",
            |v| v == baseline + 7.0,
            Duration::from_secs(10),
        )
        .await;
    let m = sidecar.metrics().await;
    let node0 = format!(
        "redis_pool_node_conns{{node=\"{}\"}}",
        cluster.nodes[0].addr()
    );
    assert!(sample(&m, &node0).unwrap() >= 2.0, "{m}");
    drop(conns);
    sidecar
        .wait_metric(
            "redis_pool_current_conns",
            |v| v == baseline,
            Duration::from_secs(10),
        )
        .await;
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_and_cluster_info_follow_the_cluster() {
    let mut cluster = Cluster::launch(Options::default()).await;
    // Nothing here needs an attempt to time out; a loaded machine must not fail the dials.
    let env = support::with_vars(
        cluster.patient_env(),
        &[
            ("PROBE_INFO_INTERVAL", "300ms"),
            ("PROBE_EXPECTED_SHARDS", "5"),
        ],
    );
    let sidecar = Sidecar::start(support::config(&env)).await;
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(30))
        .await;
    sidecar
        .wait_metric(
            "redis_cluster_slots_ok",
            |v| v == 16384.0,
            Duration::from_secs(10),
        )
        .await;
    let m = sidecar.metrics().await;
    assert_eq!(sample(&m, "redis_cluster_state"), Some(1.0));
    assert_eq!(sample(&m, "redis_cluster_size"), Some(3.0));
    assert_eq!(sample(&m, "redis_cluster_known_nodes"), Some(6.0));
    // Export checks: the declared bounds as set (5).
    assert_eq!(sample(&m, "redis_cluster_expected_shards_min"), Some(5.0));
    assert_eq!(sample(&m, "redis_cluster_expected_shards_max"), Some(5.0));
    for n in &cluster.nodes {
        let node = format!("{{node=\"{}\"}}", n.addr());
        assert!(
            sample(&m, &format!("redis_connected_clients{node}")).unwrap() >= 1.0,
            "{m}"
        );
        assert_eq!(
            sample(&m, &format!("redis_max_clients{node}")),
            Some(10000.0),
            "{m}"
        );
        assert!(
            sample(&m, &format!("redis_connections_received_total{node}")).unwrap() >= 1.0,
            "{m}"
        );
        assert!(
            sample(&m, &format!("redis_rejected_connections_total{node}")).is_some(),
            "{m}"
        );
    }
    assert_eq!(
        sample(&m, "redis_probe_parse_errors_total{source=\"info\"}"),
        Some(0.0)
    );

    // More clients on a node show up in connected_clients, and leave it again. Other clients
    // (the harness's redis-cli, a replication link being made) may come and go meanwhile, so
    // the test opens ten and asks for a change of at least eight each way.
    let node0 = format!(
        "redis_connected_clients{{node=\"{}\"}}",
        cluster.nodes[0].addr()
    );
    let before = sample(&m, &node0).unwrap();
    let conns = open_connections(&cluster, [0; 10]).await;
    let peak = sidecar
        .wait_metric(&node0, |v| v >= before + 8.0, Duration::from_secs(10))
        .await;
    drop(conns);
    sidecar
        .wait_metric(&node0, |v| v <= peak - 8.0, Duration::from_secs(10))
        .await;

    // Remove a shard's coverage: its slots fail and the cluster state goes down.
    let primary = cluster.primaries()[0];
    let replica = cluster.replica_of(primary);
    cluster.kill_node(primary);
    cluster.kill_node(replica);
    sidecar
        .wait_metric(
            "redis_cluster_slots_fail",
            |v| v > 0.0,
            Duration::from_secs(15),
        )
        .await;
    sidecar
        .wait_metric("redis_cluster_state", |v| v == 0.0, Duration::from_secs(15))
        .await;
    let m = sidecar.metrics().await;
    assert!(sample(&m, "redis_cluster_slots_ok").unwrap() < 16384.0);
    assert_eq!(
        sample(
            &m,
            &format!(
                "redis_connected_clients{{node=\"{}\"}}",
                cluster.nodes[primary].addr()
            )
        ),
        None,
        "{m}"
    );
    sidecar.stop().await;
}
