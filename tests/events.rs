//! The field's routine events on real servers: the sidecar names what happened (its event log,
//! a cause for each connection it lost, each node's engine, version and restarts), and an idle
//! cut is reported only when no server event explains a lost idle connection and it happened
//! twice at the same age. Kubelet-style probes on `/readyz` run through each event
//! ([`Prober`]): the kubelet never acts.

mod support;

use std::time::Duration;

use support::kubelet::Prober;
use support::{Cluster, Engine, Fault, Options, Sidecar, sample, with_vars};

/// The canary idles at most `max`, the loop checks every second and reads INFO every second.
fn canary_env(cluster: &Cluster, max: &str) -> Vec<(String, String)> {
    with_vars(
        cluster.patient_env(),
        &[
            ("PROBE_IDLE_CANARY", max),
            ("PROBE_INTERVAL", "1s"),
            ("PROBE_INFO_INTERVAL", "1s"),
        ],
    )
}

/// `redis_probe_disconnects_total{conn="canary",cause=…}`.
fn disconnects(m: &str, cause: &str) -> f64 {
    sample(
        m,
        &format!("redis_probe_disconnects_total{{conn=\"canary\",cause=\"{cause}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Waits until every node's canary has survived one idle.
async fn canaries_settled(sidecar: &Sidecar) {
    support::eventually(
        Duration::from_secs(60),
        "a canary survived on every node",
        || async {
            let m = sidecar.metrics().await;
            let survived = m
                .lines()
                .filter(|l| {
                    l.starts_with("redis_idle_canary_total{") && l.contains("result=\"survived\"")
                })
                .filter(|l| !l.ends_with(" 0"))
                .count();
            support::holds(survived == 6, || m)
        },
    )
    .await;
}

/// A `CLIENT KILL` of every client on one node and a restart of another (as a replacement or an
/// engine upgrade does): the canaries lose their connections, and each loss is put down to the
/// server event, never to an idle cut. The events are on `/events`, the restart is counted per
/// node, every node reports the engine and version it runs, and `diagnose` finds no idle cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_events_are_not_idle_cuts() {
    let mut cluster = Cluster::launch(Options::default()).await;
    let env = canary_env(&cluster, "4s");
    let sidecar = Sidecar::spawn(&env).await;
    let prober = Prober::once_ready(&sidecar).await;
    canaries_settled(&sidecar).await;

    let killed = cluster.primaries()[0];
    let restarted = cluster.replica_of(cluster.primaries()[1]);
    let restarted_addr = cluster.nodes[restarted].addr();
    tokio::task::block_in_place(|| {
        Fault::ClientKill(Some(killed)).apply(&mut cluster, None);
        Fault::Restart(restarted).apply(&mut cluster, None);
    });
    // Both canaries meet the loss at their next PING and put it down to the events.
    let m = support::eventually(Duration::from_secs(60), "two losses explained", || async {
        let m = sidecar.metrics().await;
        let explained = disconnects(&m, "all_clients_dropped") + disconnects(&m, "node_restarted");
        support::holds(explained >= 2.0, || m.clone()).map(|_| m)
    })
    .await;
    for cause in ["path_idle_cut", "server_idle_timeout"] {
        assert_eq!(disconnects(&m, cause), 0.0, "{cause}:\n{m}");
    }
    assert!(!m.contains("redis_idle_cut_seconds{"), "{m}");
    assert!(!sidecar.logs().contains("was cut"), "{}", sidecar.logs());

    // The restart is an event and a count; every node says what it runs.
    let restarts = format!("redis_node_restarts_total{{node=\"{restarted_addr}\"}}");
    sidecar
        .wait_metric(&restarts, |v| v >= 1.0, Duration::from_secs(30))
        .await;
    // The health loop's own connections lost to the two events are put down to them too.
    for cause in ["node_restarted", "all_clients_dropped"] {
        let series = format!("redis_probe_disconnects_total{{conn=\"health\",cause=\"{cause}\"}}");
        sidecar
            .wait_metric(&series, |v| v >= 1.0, Duration::from_secs(90))
            .await;
    }
    let (status, log) = sidecar.get("/events").await;
    assert_eq!(status, 200);
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "node_restarted" && e["node"] == restarted_addr.as_str()),
        "{log}"
    );
    assert!(events.iter().any(|e| e["kind"] == "disconnect"), "{log}");
    assert!(!log.contains(&cluster.password), "{log}");
    let engine = if cluster.engine.is_valkey() {
        "valkey"
    } else {
        "redis"
    };
    let version = cluster.engine.version();
    let m = sidecar.metrics().await;
    for n in &cluster.nodes {
        let series = format!(
            "redis_node_server_info{{node=\"{}\",engine=\"{engine}\",version=\"{version}\"}}",
            n.addr()
        );
        assert_eq!(sample(&m, &series), Some(1.0), "{series}:\n{m}");
    }

    // diagnose in the same pod finds no idle cut for an app that idles 30 minutes.
    let diag = with_vars(
        env.clone(),
        &[
            ("REDIS_CONN_MAX_IDLE_TIME", "30m".to_string()),
            ("PROBE_LISTEN", format!("127.0.0.1:{}", sidecar.addr.port())),
        ],
    );
    let (_, report) = support::run_binary(None, &diag, &["diagnose", "--duration", "1s"]);
    assert!(!report.contains("idle_above_cut"), "{report}");
    // Its account of what happened is the sidecar's event log.
    let history = report
        .split("== What happened")
        .nth(1)
        .unwrap_or_else(|| panic!("no history section:\n{report}"));
    assert!(
        history.contains(&format!("node_restarted {restarted_addr}")),
        "{report}"
    );
    let probed = prober.stop();
    println!("server_events_are_not_idle_cuts: {}", probed.held());
    sidecar.stop().await;
}

/// The server's own `timeout` (3 s) closes the canary's idle connection and nothing else: the
/// cut is learned at the right age, twice seen, and put down to the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_timeout_is_the_servers_idle_cut() {
    let cluster = Cluster::launch(Options::default()).await;
    cluster.cli_all(&["CONFIG", "SET", "timeout", "3"]);
    let sidecar = Sidecar::spawn(&canary_env(&cluster, "8s")).await;
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(30))
        .await;
    let m = support::eventually(
        Duration::from_secs(120),
        "a cut of 3-5 s by the server",
        || async {
            let m = sidecar.metrics().await;
            let found = m.lines().any(|l| {
                l.starts_with("redis_idle_cut_seconds{")
                    && l.contains("by=\"server\"")
                    && l.rsplit(' ')
                        .next()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(|v| (3.0..=5.0).contains(&v))
            });
            support::holds(found, || m.clone()).map(|_| m)
        },
    )
    .await;
    assert!(disconnects(&m, "server_idle_timeout") >= 2.0, "{m}");
    assert_eq!(disconnects(&m, "path_idle_cut"), 0.0, "{m}");
    let logs = sidecar.logs();
    assert!(logs.contains("\"by\":\"server\""), "{logs}");
    sidecar.stop().await;
}

/// Engine and version per node on Valkey 9 too (whose `redis_version` says 7.2.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_reports_its_own_version() {
    let cluster = Cluster::launch(Options {
        cluster: false,
        ..Options::on(Engine::Valkey9)
    })
    .await;
    let env = with_vars(cluster.patient_env(), &[("PROBE_INFO_INTERVAL", "1s")]);
    let sidecar = Sidecar::spawn(&env).await;
    let series = format!(
        "redis_node_server_info{{node=\"{}\",engine=\"valkey\",version=\"{}\"}}",
        cluster.nodes[0].addr(),
        Engine::Valkey9.version()
    );
    sidecar
        .wait_metric(&series, |v| v == 1.0, Duration::from_secs(30))
        .await;
    assert!(!sidecar.metrics().await.contains("version=\"7.2.4\""));
    sidecar.stop().await;
}

/// maxclients reached on a TLS node: new connections are dropped before the handshake (a client
/// sees "tls handshake eof"), the node's `rejected_connections` rises, and the sidecar says so
/// with a `clients_rejected` event and a log line naming maxclients, read over the connection it
/// already holds; the pod stays ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maxclients_reached_is_named() {
    let cluster = Cluster::launch(Options::default()).await;
    let env = with_vars(cluster.patient_env(), &[("PROBE_INFO_INTERVAL", "1s")]);
    let sidecar = Sidecar::spawn(&env).await;
    let prober = Prober::once_ready(&sidecar).await;
    let full = cluster.replica_of(cluster.primaries()[0]);
    let node = cluster.nodes[full].addr();
    sidecar
        .wait_metric(
            &format!("redis_rejected_connections_total{{node=\"{node}\"}}"),
            |v| v == 0.0,
            Duration::from_secs(30),
        )
        .await;
    // The sidecar's connection and this one: room for nobody else once this one closes.
    let out = cluster.cli(full, &["CONFIG", "SET", "maxclients", "1"]);
    assert!(out.contains("OK"), "{out}");
    support::eventually(Duration::from_secs(30), "a connection rejected", || {
        let rejected = !cluster.cli(full, &["PING"]).contains("PONG");
        std::future::ready(support::holds(rejected, String::new))
    })
    .await;
    sidecar
        .wait_log(
            "the node rejected connections (maxclients)",
            Duration::from_secs(30),
        )
        .await;
    let (_, log) = sidecar.get("/events").await;
    assert!(
        log.lines()
            .any(|l| l.contains("\"clients_rejected\"") && l.contains(&node)),
        "{log}"
    );
    assert_eq!(sidecar.get("/readyz").await.0, 200);
    // diagnose in the pod: its own dial to the node is dropped before the handshake
    // (connection_closed, or connection_reset when the close races its TLS hello), and the
    // running sidecar's event log says why.
    let in_pod = with_vars(env.clone(), &[("PROBE_LISTEN", sidecar.addr.to_string())]);
    let found = max_clients_findings(&in_pod);
    assert!(
        found.iter().any(|m| {
            m.starts_with(&format!("{node}: drops new connections (connection_"))
                && m.contains("maxclients reached")
        }),
        "{found:?}"
    );
    let probed = prober.stop();
    println!("maxclients_reached_is_named: {}", probed.held());
    sidecar.stop().await;
}

/// `diagnose`'s `max_clients` findings.
fn max_clients_findings(env: &[(String, String)]) -> Vec<String> {
    let (_, out) = support::run_binary(
        None,
        env,
        &["diagnose", "--duration", "1s", "--format", "json"],
    );
    let json: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("diagnose JSON does not parse ({e}):\n{out}"));
    json["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["code"] == "max_clients")
        .map(|f| f["message"].as_str().unwrap().to_string())
        .collect()
}

/// maxclients reached on a plain-text node: the node says so to a new client
/// (`-ERR max number of clients + cluster connections reached`), and the sidecar names it `max_clients`, never
/// `other`: in `/readyz?verbose` and in `diagnose`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maxclients_is_named_on_a_plain_text_node() {
    use std::io::{Read, Write};
    let cluster = Cluster::launch(Options {
        tls: false,
        ..Options::default()
    })
    .await;
    let full = cluster.replica_of(cluster.primaries()[0]);
    let node = cluster.nodes[full].addr();
    // Redis counts its cluster bus links and its replication link against maxclients too:
    // fill what is left with this test's own connections, held open, until one is refused.
    let out = cluster.cli(full, &["CONFIG", "SET", "maxclients", "20"]);
    assert!(out.contains("OK"), "{out}");
    let auth = format!(
        "*2\r\n$4\r\nAUTH\r\n${}\r\n{}\r\n",
        cluster.password.len(),
        cluster.password
    );
    let mut held = vec![];
    let refused = loop {
        assert!(
            held.len() < 20,
            "the node took 20 more clients at maxclients 20"
        );
        let mut s = std::net::TcpStream::connect(&node).unwrap();
        s.write_all(auth.as_bytes()).unwrap();
        let mut reply = vec![0u8; 64];
        let n = s.read(&mut reply).unwrap();
        let reply = String::from_utf8_lossy(&reply[..n]).into_owned();
        match reply.as_str() {
            "+OK\r\n" => held.push(s),
            _ => break reply,
        }
    };
    assert!(refused.contains("max number of clients"), "{refused}");

    let env = with_vars(cluster.patient_env(), &[("PROBE_INTERVAL", "1s")]);
    let found = max_clients_findings(&env);
    assert_eq!(
        found,
        [format!(
            "{node}: refuses new connections, maxclients reached (the node said so)"
        )]
    );
    let sidecar = Sidecar::spawn(&env).await;
    let prober = Prober::once_ready(&sidecar).await;
    sidecar
        .wait_body(
            "/readyz?verbose",
            200,
            &format!("replica {node} max_clients"),
            Duration::from_secs(30),
        )
        .await;
    // Ready through ten more checks while the node turns every new client away. Each check's
    // dial costs the node two connections (the AUTH that fails, then the bare PING that reads
    // why), and the sidecar counts both: its connection attempts follow the node's own
    // rejected_connections (read over a connection this test holds), give or take the checks
    // in flight at either end.
    let checks = |m: &str| sample(m, "redis_health_checks_total").unwrap_or(0.0);
    let attempts = |m: &str| sample(m, "redis_probe_connection_attempts_total").unwrap_or(0.0);
    let m = sidecar.metrics().await;
    let (start, dials) = (checks(&m), attempts(&m));
    let rejected = rejected_connections(&held[0]);
    support::ready_until(&sidecar, Duration::from_secs(60), |m| {
        checks(m) >= start + 10.0
    })
    .await;
    let rejected = rejected_connections(&held[0]) - rejected;
    let dials = attempts(&sidecar.metrics().await) - dials;
    assert!(
        rejected >= 20.0 && (dials - rejected).abs() <= 4.0,
        "the node rejected {rejected} connections; the sidecar counted {dials}"
    );
    assert_eq!(sidecar.get("/readyz").await.0, 200);
    drop(held);
    let probed = prober.stop();
    println!(
        "maxclients_is_named_on_a_plain_text_node: {}",
        probed.held()
    );
    sidecar.stop().await;
}

/// `rejected_connections` from `INFO stats`, asked over `conn` (authenticated, RESP2).
fn rejected_connections(mut conn: &std::net::TcpStream) -> f64 {
    use std::io::{Read, Write};
    conn.write_all(b"*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n")
        .unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    // `$LEN\r\n`, LEN bytes, `\r\n`.
    loop {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "the node closed the connection");
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        let Some((head, body)) = text.split_once("\r\n") else {
            continue;
        };
        let len: usize = head
            .trim_start_matches('$')
            .parse()
            .unwrap_or_else(|_| panic!("not a bulk string: {text}"));
        if body.len() >= len + 2 {
            return body
                .lines()
                .find_map(|l| l.strip_prefix("rejected_connections:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no rejected_connections: {text}"));
        }
    }
}

/// A maximum connection age (`CLIENT KILL MAXAGE`, Valkey 8; the server-side counterpart of a
/// client's `ConnMaxLifetime`) drops every connection older than it on a node: the canary's
/// and the health loop's losses are put down to every client being dropped, never to an idle
/// cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maximum_connection_age_is_not_an_idle_cut() {
    let mut cluster = Cluster::launch(Options::on(Engine::Valkey8)).await;
    let sidecar = Sidecar::spawn(&canary_env(&cluster, "4s")).await;
    let prober = Prober::once_ready(&sidecar).await;
    canaries_settled(&sidecar).await;
    let node = cluster.primaries()[0];
    tokio::task::block_in_place(|| {
        Fault::on(node, &["CLIENT", "KILL", "MAXAGE", "1"]).apply(&mut cluster, None)
    });
    let m = support::eventually(Duration::from_secs(60), "the losses explained", || async {
        let m = sidecar.metrics().await;
        let canary = disconnects(&m, "all_clients_dropped");
        let health = sample(
            &m,
            "redis_probe_disconnects_total{conn=\"health\",cause=\"all_clients_dropped\"}",
        )
        .unwrap_or(0.0);
        support::holds(canary >= 1.0 && health >= 1.0, || m.clone()).map(|_| m)
    })
    .await;
    assert!(!m.contains("redis_idle_cut_seconds{"), "{m}");
    for cause in ["path_idle_cut", "server_idle_timeout"] {
        assert_eq!(disconnects(&m, cause), 0.0, "{cause}:\n{m}");
    }
    let probed = prober.stop();
    println!(
        "a_maximum_connection_age_is_not_an_idle_cut: {}",
        probed.held()
    );
    sidecar.stop().await;
}
