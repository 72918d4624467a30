//! The ElastiCache shape (`support::Shape::ElastiCache`): nodes announced by host name with a
//! certificate naming only it, the CA in the system trust store, CONFIG and DEBUG removed,
//! `cluster-require-full-coverage no`, and the sidecar (the real binary, so `SSL_CERT_FILE`
//! is its own) logged in as a least-privilege ACL user.

mod support;

use std::time::{Duration, Instant};

use support::{
    Cluster, Options, PROBE_ACL, PROBE_USER, Sidecar, role_series, sample, wait_reason, with_vars,
};

async fn start() -> Cluster {
    Cluster::launch(Options::elasticache()).await
}

async fn ready(sidecar: &Sidecar) {
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(30))
        .await;
}

/// Ready through host names and the system trust store, every node labelled by its name; a
/// planned failover and a killed primary followed; a lost shard is `no_primary` while the
/// cluster still says `cluster_state:ok` (full coverage not required); a full outage turns
/// unready and recovery ready. Nothing the sidecar sends is refused or fails: no ACL denial
/// (`CLIENT SETINFO` is never sent), no ACL LOG entry, no error reply on any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_behaviours_in_the_elasticache_shape() {
    let mut cluster = start().await;
    let env = with_vars(cluster.env(), &[("PROBE_INTERVAL", "1s")]);
    assert!(!env.iter().any(|(k, _)| k == "REDIS_TLS_CA_FILE"));
    // Making the cluster leaves an error reply or two of its own (replication's first AUTH).
    let errors_before: Vec<u64> = (0..cluster.nodes.len())
        .map(|i| error_replies(&cluster, i))
        .collect();
    let sidecar = Sidecar::spawn(&env).await;
    ready(&sidecar).await;
    let m = sidecar.metrics().await;
    for n in &cluster.nodes {
        let series = format!("redis_node_up{{node=\"localhost:{}\"", n.public_port);
        assert!(m.contains(&series), "no {series}:\n{m}");
    }
    assert!(!m.contains("node=\"127.0.0.1:"), "{m}");
    assert_eq!(
        m.matches("redis_max_clients{").count(),
        6,
        "INFO is allowed to the user: {m}"
    );
    // A few checks and INFO reads later, no node has refused or failed a command of the
    // sidecar's. The nodes' counters restart with them, so this is read before any fault.
    let checks = sample(&m, "redis_health_checks_total").expect("checks counted");
    support::eventually(Duration::from_secs(30), "3 more checks", || async {
        let m = sidecar.metrics().await;
        let now = sample(&m, "redis_health_checks_total").unwrap_or(0.0);
        support::holds(now >= checks + 3.0, || m)
    })
    .await;
    for (i, before) in errors_before.iter().enumerate() {
        let stats = cluster.cli(i, &["INFO", "stats"]);
        // Valkey and Redis 7.2+ count ACL denials here (7.0 has no such line).
        assert!(
            !stats.contains("acl_access_denied_cmd:") || stats.contains("acl_access_denied_cmd:0"),
            "node {i}:\n{stats}"
        );
        assert_eq!(
            error_replies(&cluster, i),
            *before,
            "node {i} answered the sidecar with an error:\n{}",
            cluster.cli(i, &["INFO", "errorstats"])
        );
        let log = cluster.cli(i, &["ACL", "LOG"]);
        assert!(log.trim().is_empty(), "node {i}: ACL LOG:\n{log}");
    }

    // Planned failover, from the harness's admin connection.
    let (_, replica) = support::planned_failover_followed(&cluster, &sidecar).await;

    // A killed primary: its replica takes over and the sidecar follows.
    let primary = replica;
    let replica = cluster.replica_of(primary);
    cluster.kill_node(primary);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = sidecar.metrics().await;
        if sample(&m, &role_series(&cluster, replica, "primary")) == Some(1.0)
            && sidecar.get("/readyz").await.0 == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "failover not followed:\n{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::task::block_in_place(|| {
        cluster.start_node(primary);
        cluster.wait_healthy(Duration::from_secs(60));
    });
    ready(&sidecar).await;

    // A whole shard lost: no_primary, while CLUSTER INFO still says ok.
    let primary = cluster.primaries()[0];
    let replica = cluster.replica_of(primary);
    cluster.kill_node(replica);
    cluster.kill_node(primary);
    wait_reason(&sidecar, "no_primary", Duration::from_secs(30)).await;
    let survivor = (0..cluster.nodes.len())
        .find(|i| *i != primary && *i != replica)
        .unwrap();
    tokio::task::block_in_place(|| {
        cluster.wait_for(
            Duration::from_secs(15),
            "the survivors mark the shard failed",
            |c| {
                c.cli(survivor, &["CLUSTER", "INFO"])
                    .contains("cluster_slots_fail:")
            },
        );
    });
    assert!(
        cluster
            .cli(survivor, &["CLUSTER", "INFO"])
            .contains("cluster_state:ok"),
        "cluster-require-full-coverage no keeps the cluster ok"
    );

    // Everything lost, then back.
    cluster.kill_all();
    let body = wait_reason(&sidecar, "connection_refused", Duration::from_secs(30)).await;
    assert!(!body.contains(support::PROBE_USER_PASSWORD), "{body}");
    tokio::task::block_in_place(|| cluster.restart_all(Duration::from_secs(60)));
    ready(&sidecar).await;

    assert!(!sidecar.logs().contains(support::PROBE_USER_PASSWORD));
    sidecar.stop().await;
}

/// Each command the least-privilege user lacks, on a real server: without CLUSTER SHARDS the
/// topology comes from CLUSTER SLOTS (ready, connections kept, a failover still followed);
/// without both SHARDS and SLOTS only the seed address is checked (ready, one node); without
/// `cluster|info` every node is still followed and ready; without INFO (`+@all -@dangerous`)
/// the server metrics are absent, counted and logged once; without PING readiness fails as
/// `permission`. Each refusal is one log line naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_users() {
    let cluster = start().await;
    let user = |name: &str, rules: &str| {
        let mut args = vec!["ACL", "SETUSER", name, "on", ">Us3r-Pass-For-Tests"];
        args.extend(rules.split(' '));
        cluster.cli_all(&args);
        let mut env = cluster.env();
        env.retain(|(k, _)| k != "REDIS_USERNAME" && k != "REDIS_PASSWORD");
        with_vars(
            env,
            &[
                ("REDIS_USERNAME", name),
                ("REDIS_PASSWORD", "Us3r-Pass-For-Tests"),
                ("PROBE_INFO_INTERVAL", "1s"),
            ],
        )
    };

    let no_shards = user("noshards", "-@all +ping +info +cluster|slots +cluster|info");
    let sidecar = Sidecar::spawn(&no_shards).await;
    ready(&sidecar).await;
    // CLUSTER SLOTS lists a replica once its replication offset has reached the cluster's
    // gossip (up to a replication ping period after the cluster is made).
    let deadline = Instant::now() + Duration::from_secs(30);
    let m = loop {
        let m = sidecar.metrics().await;
        if m.matches("redis_node_up{").count() == 6 {
            break m;
        }
        assert!(Instant::now() < deadline, "replicas not followed:\n{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let dials = sample(&m, "redis_probe_connection_attempts_total").expect("dials counted");
    let logs = sidecar.logs();
    assert_eq!(
        logs.matches("refused CLUSTER SHARDS").count(),
        1,
        "one line naming the command:\n{logs}"
    );
    assert!(!logs.contains("[-]redis failed"));
    support::planned_failover_followed(&cluster, &sidecar).await;
    let after = sample(
        &sidecar.metrics().await,
        "redis_probe_connection_attempts_total",
    )
    .expect("dials counted");
    assert!(
        after <= dials + 2.0,
        "connections are kept, not re-dialled: {dials} -> {after}"
    );
    sidecar.stop().await;

    // Neither topology command: the seed alone is checked, and that is enough to be ready.
    let seed_only = user("seedonly", "-@all +ping +info +cluster|info");
    let sidecar = Sidecar::spawn(&seed_only).await;
    ready(&sidecar).await;
    let m = sidecar.metrics().await;
    assert_eq!(m.matches("redis_node_up{").count(), 1, "{m}");
    let logs = sidecar.logs();
    assert_eq!(logs.matches("refused CLUSTER SLOTS").count(), 1, "{logs}");
    sidecar.stop().await;

    // No CLUSTER INFO: ready, every node followed, the cluster's own view absent.
    let no_cluster_info = user(
        "noclusterinfo",
        "-@all +ping +info +cluster|shards +cluster|slots",
    );
    let sidecar = Sidecar::spawn(&no_cluster_info).await;
    ready(&sidecar).await;
    let m = support::eventually(Duration::from_secs(30), "every node followed", || async {
        let m = sidecar.metrics().await;
        support::holds(m.matches("redis_node_up{").count() == 6, || m.clone()).map(|_| m)
    })
    .await;
    assert!(m.contains("redis_max_clients{"), "INFO is still read: {m}");
    for series in [
        "redis_cluster_state",
        "redis_cluster_size",
        "redis_cluster_slots_fail",
    ] {
        assert_eq!(sample(&m, series), None, "{m}");
    }
    let logs = sidecar.logs();
    assert_eq!(logs.matches("refused CLUSTER INFO").count(), 1, "{logs}");
    sidecar.stop().await;

    let no_info = user("nodangerous", "+@all -@dangerous");
    let sidecar = Sidecar::spawn(&no_info).await;
    ready(&sidecar).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = sidecar.metrics().await;
        if sample(&m, "redis_probe_info_failures_total{reason=\"permission\"}")
            .is_some_and(|v| v >= 6.0)
        {
            assert!(!m.contains("redis_max_clients{"), "{m}");
            break;
        }
        assert!(Instant::now() < deadline, "INFO refusals not counted:\n{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logs = sidecar.logs();
    assert_eq!(logs.matches("refused INFO").count(), 1, "{logs}");
    assert_eq!(sidecar.get("/readyz").await.0, 200);
    sidecar.stop().await;

    let no_ping = user(
        "noping",
        "-@all +info +cluster|shards +cluster|slots +cluster|info",
    );
    let sidecar = Sidecar::spawn(&no_ping).await;
    wait_reason(&sidecar, "permission", Duration::from_secs(30)).await;
    sidecar.stop().await;

    // The README's ACL string is the one the shape's own user has.
    let acl = cluster.cli(0, &["ACL", "LIST"]);
    assert!(
        acl.lines()
            .any(|l| l.starts_with(&format!("user {PROBE_USER} on"))),
        "{acl}"
    );
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(
        readme.contains(PROBE_ACL),
        "README lacks the ACL `{PROBE_ACL}`"
    );
}

/// The user's password rotated the way ElastiCache RBAC does it (the old one revoked, the
/// Secret's file swapped): the sidecar takes the new one from the file and stays ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_password_rotation() {
    let cluster = start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, support::PROBE_USER_PASSWORD).unwrap();
    let mut env = cluster.env();
    env.retain(|(k, _)| k != "REDIS_PASSWORD");
    env.push(("REDIS_PASSWORD_FILE".into(), file.display().to_string()));
    let sidecar = Sidecar::spawn(&env).await;
    ready(&sidecar).await;

    let new = "R0tated-User-Pass-99";
    cluster.cli_all(&[
        "ACL",
        "SETUSER",
        PROBE_USER,
        "resetpass",
        &format!(">{new}"),
    ]);
    let tmp = dir.path().join("password.tmp");
    std::fs::write(&tmp, new).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    // Old connections are still authenticated; new ones must use the new password.
    cluster.cli_all(&["CLIENT", "KILL", "USER", PROBE_USER]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sidecar.logs().contains("password file changed") {
        assert!(
            Instant::now() < deadline,
            "file change not seen:\n{}",
            sidecar.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Two more checks pass on connections made with the new password.
    let checks = |m: &str| sample(m, "redis_health_checks_total").unwrap_or(0.0);
    let seen = checks(&sidecar.metrics().await);
    loop {
        let m = sidecar.metrics().await;
        if checks(&m) >= seen + 2.0 && sample(&m, "redis_up") == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready with the new password:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sidecar.get("/readyz").await.0, 200);
    let logs = sidecar.logs();
    assert!(logs.contains("password file changed"), "{logs}");
    assert!(!logs.contains(new) && !logs.contains(support::PROBE_USER_PASSWORD));
    sidecar.stop().await;
}

/// `diagnose` in the shape: clean, certificates verified through the system store, and this
/// pod's connections counted for host-name nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnose_in_the_elasticache_shape() {
    let cluster = start().await;
    let env = with_vars(cluster.patient_env(), &[("REDIS_READ_TIMEOUT", "10s")]);
    let out = support::binary_command(None, env.iter().cloned())
        .args(["diagnose", "--duration", "1s", "--format", "json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["verdict"], "ok", "{text}");
    assert!(!text.contains(support::PROBE_USER_PASSWORD));
    let connections = json["connections"].to_string();
    assert!(connections.contains("localhost:"), "{connections}");
    let out = support::binary_command(None, env.iter().cloned())
        .args(["diagnose", "--duration", "1s"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("verified"), "{text}");
    let rows: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("== Connections"))
        .take_while(|l| !l.contains("the app's connections") && !l.contains("ceiling:"))
        .filter(|l| l.contains("localhost:"))
        .collect();
    assert_eq!(rows.len(), 6, "{text}");
    for r in rows {
        assert!(
            !r.trim_end().ends_with('?'),
            "this pod's count unknown: {r}"
        );
    }
}

/// A user named like its own password (the two variables mixed up by hand), without PING: the
/// server's NOPERM names the user (Valkey does; Redis 7.0 does not), so the check's detail would
/// carry the password. It is scrubbed from the body, the logs and `diagnose`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_the_server_echoes_is_scrubbed() {
    const SECRET: &str = "Us3r-Pass-For-Tests";
    let server = Cluster::launch(Options {
        cluster: false,
        ..Options::on(support::Engine::Valkey9)
    })
    .await;
    let mut args = vec!["ACL", "SETUSER", SECRET, "on", ">Us3r-Pass-For-Tests"];
    args.extend("-@all +info".split(' '));
    server.cli_all(&args);
    let mut env = server.env();
    env.retain(|(k, _)| k != "REDIS_USERNAME" && k != "REDIS_PASSWORD");
    let env = with_vars(
        env,
        &[("REDIS_USERNAME", SECRET), ("REDIS_PASSWORD", SECRET)],
    );
    let sidecar = Sidecar::spawn(&env).await;
    let body = wait_reason(&sidecar, "permission", Duration::from_secs(30)).await;
    sidecar
        .wait_log("<redacted>", Duration::from_secs(10))
        .await;
    let logs = sidecar.logs();
    assert!(!body.contains(SECRET), "{body}");
    assert!(!logs.contains(SECRET), "{logs}");
    let (_, report) = support::run_binary(None, &env, &["diagnose", "--duration", "1s"]);
    assert!(!report.contains(SECRET), "{report}");
    sidecar.stop().await;
}

/// `total_error_replies` of node `i`.
fn error_replies(cluster: &Cluster, i: usize) -> u64 {
    let stats = cluster.cli(i, &["INFO", "stats"]);
    stats
        .lines()
        .find_map(|l| l.trim().strip_prefix("total_error_replies:")?.parse().ok())
        .unwrap_or_else(|| panic!("node {i}: no total_error_replies:\n{stats}"))
}

/// ElastiCache Serverless, as far as a stand-in goes: one shard of all 16384 slots, its primary
/// and its replica on one host name (`localhost`, which resolves to two loopback addresses, the
/// first of which no node listens on), TLS through the system trust store. The sidecar is
/// ready; `diagnose` says the shard counts and the per-node ceiling do not apply instead of
/// finding drift or a ceiling above maxclients; without `REDIS_USERNAME` a warning says
/// Serverless takes RBAC users only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serverless_stand_in() {
    let cluster = Cluster::launch(Options {
        shards: 1,
        ..Options::elasticache()
    })
    .await;
    let env = with_vars(cluster.patient_env(), &[("PROBE_EXPECTED_SHARDS", "3")]);
    let sidecar = Sidecar::spawn(&env).await;
    ready(&sidecar).await;
    let m = sidecar
        .wait_metric(
            "redis_probe_connections",
            |v| v == 2.0,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(m, 2.0);
    assert!(
        !sidecar.logs().contains("RBAC users only"),
        "{}",
        sidecar.logs()
    );
    sidecar.stop().await;

    let diag = with_vars(env.clone(), &[("REDIS_POOL_SIZE", "1000")]);
    let (code, report) = support::run_binary(
        None,
        &diag,
        &["diagnose", "--duration", "1s", "--replicas", "72"],
    );
    assert!(report.contains("one virtual shard"), "{report}");
    for code in ["shard_drift", "ceiling_above_maxclients"] {
        assert!(!report.contains(code), "{code}:\n{report}");
    }
    assert_eq!(code, 0, "{report}");

    // The admin password alone, no user: the warning.
    let mut no_user = env.clone();
    no_user.retain(|(k, _)| k != "REDIS_USERNAME" && k != "REDIS_PASSWORD");
    no_user.push(("REDIS_PASSWORD".into(), cluster.password.clone()));
    let sidecar = Sidecar::spawn(&no_user).await;
    ready(&sidecar).await;
    sidecar
        .wait_log("RBAC users only", Duration::from_secs(30))
        .await;
    sidecar.stop().await;
}
