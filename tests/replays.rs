//! The field's routine events, replayed on real servers with kubelet-style probes on `/readyz`
//! throughout (a new connection each, `Connection: close`, 1 s): a rolling engine upgrade in
//! ElastiCache's order, and online scale-out and scale-in with keys migrating. For each: the
//! kubelet never acts, no false idle cut or finding, and the sidecar names what happened.

mod support;

use std::time::Duration;

use support::kubelet::Prober;
use support::{Cluster, Engine, Fault, Options, Sidecar, sample, with_vars};

/// The canary idles 4 s at most; checks and INFO reads every second.
fn replay_env(cluster: &Cluster) -> Vec<(String, String)> {
    with_vars(
        cluster.patient_env(),
        &[
            ("PROBE_IDLE_CANARY", "4s"),
            ("PROBE_INTERVAL", "1s"),
            ("PROBE_INFO_INTERVAL", "1s"),
        ],
    )
}

/// `redis_node_server_info` series for `engine`.
fn running(m: &str, engine: &str) -> usize {
    m.lines()
        .filter(|l| {
            l.starts_with("redis_node_server_info{") && l.contains(&format!("engine=\"{engine}\""))
        })
        .count()
}

/// `diagnose` in the sidecar's pod (it reads the running sidecar's idle cuts) with the app's
/// 30-minute idle time; the report.
async fn diagnose(env: &[(String, String)], sidecar: &Sidecar) -> (i32, String) {
    let env = with_vars(
        env.to_vec(),
        &[
            ("REDIS_CONN_MAX_IDLE_TIME", "30m".to_string()),
            ("PROBE_LISTEN", format!("127.0.0.1:{}", sidecar.addr.port())),
        ],
    );
    tokio::task::spawn_blocking(move || {
        support::run_binary(None, &env, &["diagnose", "--duration", "1s"])
    })
    .await
    .unwrap()
}

/// Fails on a finding the events would explain away but a false signal would raise.
fn no_false_findings(report: &str) {
    for code in [
        "idle_above_cut",
        "shard_drift",
        "slots_uncovered",
        "unreachable",
    ] {
        assert!(
            !report.contains(&format!("] {code}: ")),
            "{code}:\n{report}"
        );
    }
}

/// Waits until node `i` replicates from a primary with its link up.
fn in_sync(c: &Cluster, i: usize) {
    c.wait_for(Duration::from_secs(60), "the replica is in sync", |c| {
        let r = c.cli(i, &["INFO", "replication"]);
        r.contains("role:slave") && r.contains("master_link_status:up")
    });
}

/// Redis 7 to Valkey 8 in ElastiCache's order: each replica restarted on the new engine, each
/// shard failed over to it, then each old primary restarted on the new engine. Half way, the
/// mixed versions are visible (metrics and a `diagnose` finding); at the end every node says
/// Valkey 8 and its restart was counted; each canary connection the restarts dropped is put
/// down to them, never to an idle cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_from_redis_7_to_valkey_8() {
    let cluster = Cluster::launch(Options::on(Engine::Redis7)).await;
    let env = replay_env(&cluster);
    let sidecar = Sidecar::spawn(&env).await;
    let prober = Prober::once_ready(&sidecar).await;
    let primaries = cluster.primaries();
    let replicas: Vec<usize> = primaries.iter().map(|p| cluster.replica_of(*p)).collect();

    // 1. The replicas, one by one.
    let cluster = tokio::task::spawn_blocking(move || {
        let mut c = cluster;
        for &r in &replicas {
            Fault::RestartOn(r, Engine::Valkey8).apply(&mut c, None);
            in_sync(&c, r);
        }
        (c, replicas)
    })
    .await
    .unwrap();
    let (cluster, replicas) = cluster;
    let m = support::eventually(
        Duration::from_secs(30),
        "3 nodes on each engine",
        || async {
            let m = sidecar.metrics().await;
            support::holds(
                running(&m, "redis") == 3 && running(&m, "valkey") == 3,
                || m.clone(),
            )
            .map(|_| m)
        },
    )
    .await;
    assert!(
        m.contains(&format!("version=\"{}\"", Engine::Valkey8.version())),
        "{m}"
    );
    let (_, report) = diagnose(&env, &sidecar).await;
    assert!(report.contains("] mixed_versions: "), "{report}");

    // 2. Each shard fails over to its upgraded replica; 3. the old primaries, now replicas.
    let cluster = tokio::task::spawn_blocking(move || {
        let mut c = cluster;
        for &r in &replicas {
            Fault::on(r, &["CLUSTER", "FAILOVER"]).apply(&mut c, None);
            c.wait_for(Duration::from_secs(30), "the replica took over", |c| {
                c.cli(r, &["ROLE"]).starts_with("master")
            });
        }
        for &p in &primaries {
            in_sync(&c, p);
            Fault::RestartOn(p, Engine::Valkey8).apply(&mut c, None);
            in_sync(&c, p);
        }
        c.wait_healthy(Duration::from_secs(60));
        c
    })
    .await
    .unwrap();

    // Valkey groups nodes by shard id, which Redis 7.0 never sent: after this upgrade some
    // Valkey 8.0 primaries' CLUSTER SHARDS leaves their own replica out for as long as they
    // run (and, for a second after a failover, several nodes leave out the demoted primary).
    // The sidecar follows all six nodes all the same, with no node leaving or joining: a
    // reply that leaves a node out is checked with the same node's CLUSTER SLOTS, and the
    // partial node is asked last.
    let m = support::eventually(
        Duration::from_secs(30),
        "every node followed on Valkey 8",
        || async {
            let m = sidecar.metrics().await;
            support::holds(
                running(&m, "valkey") == 6 && running(&m, "redis") == 0,
                || m.clone(),
            )
            .map(|_| m)
        },
    )
    .await;
    let partial = (0..6)
        .filter(|&i| {
            let shards = cluster.cli(i, &["CLUSTER", "SHARDS"]);
            shards.lines().filter(|l| *l == "role").count() < 6
        })
        .count();
    println!("rolling upgrade: {partial} nodes' CLUSTER SHARDS leave a node out");
    if partial > 0 {
        sidecar
            .wait_log(
                "the node is asked last from now on",
                Duration::from_secs(30),
            )
            .await;
    }
    let probed = prober.stop();
    let (sent, failed) = probed.counts();
    println!("rolling upgrade: {}", probed.held());
    let restarts: f64 = m
        .lines()
        .filter(|l| l.starts_with("redis_node_restarts_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(restarts >= 5.0, "{restarts} restarts counted:\n{m}");
    assert!(!m.contains("redis_idle_cut_seconds{"), "{m}");
    let (_, log) = sidecar.get("/events").await;
    let changed = log
        .lines()
        .filter(|l| l.contains("\"version_changed\""))
        .count();
    assert!(changed >= 5, "{log}");
    assert!(
        !log.contains("\"node_left\"") && !log.contains("\"node_joined\""),
        "{log}"
    );
    let (_, report) = diagnose(&env, &sidecar).await;
    no_false_findings(&report);
    assert!(!report.contains("mixed_versions"), "{report}");
    println!("rolling upgrade: {sent} probes, {failed} failed; events:\n{log}");
    sidecar.stop().await;
    drop(cluster);
}

/// Scale-out and scale-in with keys: a fourth shard is added empty, given 200 slots with
/// their keys (`redis-cli --cluster reshard`: MIGRATING/IMPORTING and MIGRATE), then drained
/// and removed. The sidecar follows the new shard, then lets it go; the expected-shards bounds
/// of auto scaling (3..4) raise nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_scale_out_and_scale_in_with_keys() {
    let cluster = Cluster::launch(Options::default()).await;
    let env = with_vars(replay_env(&cluster), &[("PROBE_EXPECTED_SHARDS", "3..4")]);
    let sidecar = Sidecar::spawn(&env).await;
    let prober = Prober::once_ready(&sidecar).await;
    let cluster = tokio::task::spawn_blocking(move || {
        let mut c = cluster;
        fill_keys(&c);
        let seed = format!("{}:{}", c.nodes[0].host, c.nodes[0].port);
        let primary = c.spawn_extra();
        let replica = c.spawn_extra();
        let add = |c: &Cluster, i: usize, extra: &[&str]| add_node(c, i, &seed, extra);
        add(&c, primary, &[]);
        let mut members: Vec<usize> = (0..6).collect();
        members.push(primary);
        agree(&c, &members);
        let primary_id = c.node_id(primary);
        add(
            &c,
            replica,
            &["--cluster-slave", "--cluster-master-id", &primary_id],
        );
        members.push(replica);
        agree(&c, &members);
        in_sync(&c, replica);
        (c, seed, primary, replica, primary_id)
    })
    .await
    .unwrap();
    let (cluster, seed, primary, replica, primary_id) = cluster;
    // Followed while it is empty: 8 connections, 3 shards serving.
    sidecar
        .wait_metric(
            "redis_probe_connections",
            |v| v == 8.0,
            Duration::from_secs(30),
        )
        .await;

    let (seed2, primary_id2) = (seed.clone(), primary_id.clone());
    let cluster = tokio::task::spawn_blocking(move || {
        let (c, seed, primary_id) = (cluster, seed2, primary_id2);
        let out = c.cli_output_within(
            0,
            &[
                "--cluster",
                "reshard",
                &seed,
                "--cluster-from",
                "all",
                "--cluster-to",
                &primary_id,
                "--cluster-slots",
                "200",
                "--cluster-yes",
            ],
            Duration::from_secs(180),
        );
        assert!(out.status.success(), "{}", tail(&out));
        c
    })
    .await
    .unwrap();
    sidecar
        .wait_metric("redis_cluster_size", |v| v == 4.0, Duration::from_secs(30))
        .await;
    let (_, report) = diagnose(&env, &sidecar).await;
    no_false_findings(&report);

    // Scale-in: the slots go back, the nodes leave.
    let cluster = tokio::task::spawn_blocking(move || {
        let mut c = cluster;
        let to = c.node_id(0);
        let out = c.cli_output_within(
            0,
            &[
                "--cluster",
                "reshard",
                &seed,
                "--cluster-from",
                &primary_id,
                "--cluster-to",
                &to,
                "--cluster-slots",
                "200",
                "--cluster-yes",
            ],
            Duration::from_secs(180),
        );
        assert!(out.status.success(), "{}", tail(&out));
        for i in [replica, primary] {
            let id = c.node_id(i);
            let out = c.cli_output(0, &["--cluster", "del-node", &seed, &id]);
            assert!(out.status.success(), "{}", tail(&out));
            c.kill_node(i);
        }
        c
    })
    .await
    .unwrap();
    // Back to 3 shards, and the two nodes gone from every family (the pod's socket view
    // included, on its own cadence).
    let gone: Vec<String> = [primary, replica]
        .iter()
        .map(|i| format!("node=\"{}\"", cluster.nodes[*i].addr()))
        .collect();
    let m = support::eventually(Duration::from_secs(90), "back to 3 shards", || async {
        let m = sidecar.metrics().await;
        let back = sample(&m, "redis_probe_connections") == Some(6.0)
            && sample(&m, "redis_cluster_size") == Some(3.0)
            && gone.iter().all(|g| !m.contains(g));
        support::holds(back, || m.clone()).map(|_| m)
    })
    .await;
    assert!(!m.contains("redis_idle_cut_seconds{"), "{m}");
    let probed = prober.stop();
    let (sent, failed) = probed.counts();
    println!("scale-out and in: {}", probed.held());
    let (_, log) = sidecar.get("/events").await;
    // The two added nodes joined and, at the end, left; no other node did. (While `add-node
    // --cluster-slave` turns the new empty primary into a replica, a node's CLUSTER SHARDS can
    // list it nowhere for a moment: one more left-and-joined pair for it, seen once in six runs.)
    let added: std::collections::BTreeSet<String> = [primary, replica]
        .iter()
        .map(|i| cluster.nodes[*i].addr())
        .collect();
    let nodes_of = |kind: &str| -> std::collections::BTreeSet<String> {
        log.lines()
            .filter(|l| l.contains(&format!("\"kind\":\"{kind}\"")))
            .filter_map(|l| {
                l.split("\"node\":\"")
                    .nth(1)?
                    .split('"')
                    .next()
                    .map(String::from)
            })
            .collect()
    };
    assert_eq!(nodes_of("node_joined"), added, "{log}");
    assert_eq!(nodes_of("node_left"), added, "{log}");
    let last_of = |node: &str| {
        log.lines()
            .rfind(|l| l.contains(node) && (l.contains("node_joined") || l.contains("node_left")))
            .map(String::from)
    };
    for node in &added {
        let last = last_of(node).unwrap();
        assert!(
            last.contains("\"node_left\""),
            "{node} did not leave last:\n{log}"
        );
    }
    let (_, report) = diagnose(&env, &sidecar).await;
    no_false_findings(&report);
    println!("scale-out and in: {sent} probes, {failed} failed");
    sidecar.stop().await;
}

/// The end of a command's output (a reshard prints a line per slot).
fn tail(out: &std::process::Output) -> String {
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Waits until each of `members` knows all of them (`redis-cli --cluster` refuses to change a
/// cluster whose nodes disagree).
fn agree(c: &Cluster, members: &[usize]) {
    let known = format!("cluster_known_nodes:{}", members.len());
    c.wait_for(
        Duration::from_secs(60),
        &format!("{members:?} know each other"),
        |c| {
            members
                .iter()
                .all(|i| c.cli(*i, &["CLUSTER", "INFO"]).contains(&known))
        },
    );
}

/// Valkey 9's atomic slot migration (`CLUSTER MIGRATESLOTS`, the whole range moved by the
/// servers in one operation, no MIGRATING/IMPORTING dance): a fourth shard is added and given
/// 1,000 slots with keys. The sidecar follows the new shard without a failed probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_9_atomic_slot_migration() {
    let cluster = Cluster::launch(Options::on(Engine::Valkey9)).await;
    let env = with_vars(replay_env(&cluster), &[("PROBE_EXPECTED_SHARDS", "3..4")]);
    let sidecar = Sidecar::spawn(&env).await;
    let prober = Prober::once_ready(&sidecar).await;
    let cluster = tokio::task::spawn_blocking(move || {
        let mut c = cluster;
        fill_keys(&c);
        let seed = format!("{}:{}", c.nodes[0].host, c.nodes[0].port);
        let primary = c.spawn_extra();
        add_node(&c, primary, &seed, &[]);
        let mut members: Vec<usize> = (0..6).collect();
        members.push(primary);
        agree(&c, &members);
        // Slots 0-999 live on the primary that holds slot 0.
        let from = (0..6)
            .find(|i| {
                c.cli(*i, &["CLUSTER", "NODES"])
                    .lines()
                    .any(|l| l.contains("myself,master") && l.contains(" 0-"))
            })
            .expect("the primary of slot 0");
        let to = c.node_id(primary);
        let out = c.cli(
            from,
            &[
                "CLUSTER",
                "MIGRATESLOTS",
                "SLOTSRANGE",
                "0",
                "999",
                "NODE",
                &to,
            ],
        );
        assert!(out.contains("OK"), "MIGRATESLOTS: {out}");
        c.wait_for(Duration::from_secs(60), "the slots moved", |c| {
            c.cli(primary, &["CLUSTER", "NODES"])
                .lines()
                .any(|l| l.contains("myself,master") && l.contains(" 0-999"))
        });
        c
    })
    .await
    .unwrap();
    sidecar
        .wait_metric("redis_cluster_size", |v| v == 4.0, Duration::from_secs(30))
        .await;
    sidecar
        .wait_metric(
            "redis_probe_connections",
            |v| v == 7.0,
            Duration::from_secs(30),
        )
        .await;
    let probed = prober.stop();
    let (sent, failed) = probed.counts();
    println!("atomic slot migration: {}", probed.held());
    let (_, report) = diagnose(&env, &sidecar).await;
    no_false_findings(&report);
    println!("atomic slot migration: {sent} probes, {failed} failed");
    sidecar.stop().await;
    drop(cluster);
}

/// 300 keys across the slot ranges, so a reshard moves data.
fn fill_keys(c: &Cluster) {
    for k in 0..300 {
        let key = format!("key:{k}");
        let out = c.cli(0, &["-c", "SET", &key, "v"]);
        assert!(out.contains("OK"), "{out}");
    }
}

/// `--cluster add-node` of node `i` through `seed`, with `extra` arguments (a replica's).
fn add_node(c: &Cluster, i: usize, seed: &str, extra: &[&str]) {
    let new = format!("{}:{}", c.nodes[i].host, c.nodes[i].port);
    let mut args = vec!["--cluster", "add-node", new.as_str(), seed];
    args.extend_from_slice(extra);
    let out = c.cli_output(0, &args);
    assert!(out.status.success(), "{}", tail(&out));
}

/// Node replacement as ElastiCache does it: a replica's server goes away and a new one, with an
/// empty state, takes its place under the same name and port at a new address (127.0.0.2), and
/// the name moves to it. The sidecar, which reaches every node by its name, follows the name to
/// the new server: no probe fails, the node is up again, and the event log and `diagnose` name
/// what happened (the node came back as a new server: `node_restarted`), with no idle cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_replacement_same_name_new_address() {
    let cluster = Cluster::launch(Options {
        host_names: true,
        ..Options::default()
    })
    .await;
    let env = replay_env(&cluster);
    let hosts = cluster.hosts_file();
    let sidecar = Sidecar::spawn_resolving(&env, &hosts).await;
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(30))
        .await;
    let replaced = cluster.replica_of(cluster.primaries()[0]);
    let name = cluster.nodes[replaced].addr();
    assert!(name.starts_with(&support::node_name(replaced)), "{name}");
    let up = format!("redis_node_up{{node=\"{name}\"}}");
    sidecar
        .wait_metric(&up, |v| v == 1.0, Duration::from_secs(30))
        .await;
    let prober = Prober::start(sidecar.addr);

    let (cluster, (old, new)) = tokio::task::spawn_blocking(move || {
        let mut c = cluster;
        let ids = c.replace_replica(replaced, "127.0.0.2");
        (c, ids)
    })
    .await
    .unwrap();
    assert_ne!(old, new);
    // The name now leads to the new server, and the sidecar is connected to it.
    sidecar
        .wait_metric(&up, |v| v == 1.0, Duration::from_secs(60))
        .await;
    let (_, log) = support::eventually(
        Duration::from_secs(30),
        "the replacement in the event log",
        || async {
            let (status, log) = sidecar.get("/events").await;
            let named = log
                .lines()
                .any(|l| l.contains("\"node_restarted\"") && l.contains(&name));
            // The health loop's lost connection, put down to the node coming back as a new
            // server.
            let cause = log
                .lines()
                .any(|l| l.contains("\"health node_restarted\"") && l.contains(&name));
            support::holds(named && cause, || log.clone()).map(|_| (status, log))
        },
    )
    .await;
    let probed = prober.stop();
    let (sent, failed) = probed.counts();
    println!("node replacement: {}", probed.held());
    // Never a failover: the new server's moment as an empty primary is not one.
    assert!(
        !log.contains("role_changed") && !log.contains("failover"),
        "{log}"
    );
    let m = sidecar.metrics().await;
    assert!(!m.contains("redis_idle_cut_seconds{"), "{m}");
    let nodes_up = m
        .lines()
        .filter(|l| l.starts_with("redis_node_up{") && l.ends_with(" 1"))
        .count();
    assert_eq!(nodes_up, 6, "{m}");
    // diagnose in the pod, resolving names as the sidecar does.
    let in_pod = with_vars(
        env.clone(),
        &[("PROBE_LISTEN", format!("127.0.0.1:{}", sidecar.addr.port()))],
    );
    let script = support::resolving(&hosts);
    let mut cmd = std::process::Command::new(&script);
    cmd.env_clear()
        .envs(in_pod)
        .args(["diagnose", "--duration", "1s"]);
    let out = tokio::task::spawn_blocking(move || {
        support::run_with_timeout(cmd, Duration::from_secs(60))
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    no_false_findings(&report);
    assert!(
        report.contains(&format!("node_restarted {name}")),
        "{report}"
    );
    println!("node replacement: {sent} probes, {failed} failed; events:\n{log}");
    sidecar.stop().await;
    drop(cluster);
}
