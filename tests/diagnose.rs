//! `redis-probe diagnose` against real clusters: a healthy report exits 0; each fault makes its
//! own finding and exit 1; the JSON carries the same findings; the password is in neither.

mod support;

use support::{CertNames, Cluster, Options};

struct Run {
    code: i32,
    text: String,
    json: serde_json::Value,
}

fn diagnose(env: &[(String, String)], extra: &[&str]) -> Run {
    let run = |format: &str| {
        let mut args = vec!["diagnose", "--duration", "1s", "--format", format];
        args.extend_from_slice(extra);
        support::run_binary(None, env, &args)
    };
    let (code, text) = run("text");
    let (json_code, json) = run("json");
    assert_eq!(
        code, json_code,
        "text and JSON runs disagree:\n{text}\n{json}"
    );
    let json = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("JSON does not parse ({e}):\n{json}"));
    Run { code, text, json }
}

/// The cluster's settings with timeouts that a busy machine cannot break: a healthy cluster
/// must give a clean report, and with the fast timings' 500 ms a debug build dialling six TLS
/// nodes on a loaded 2-core machine can time out, or one late PING can make the read timeout
/// less than 10x the p99 of ten samples.
fn patient_env(cluster: &Cluster) -> Vec<(String, String)> {
    support::with_vars(cluster.patient_env(), &[("REDIS_READ_TIMEOUT", "10s")])
}

fn codes(r: &Run) -> Vec<String> {
    r.json["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap().to_string())
        .collect()
}

fn assert_finding(r: &Run, code: &str) {
    assert_eq!(r.code, 1, "{}", r.text);
    assert!(
        codes(r).iter().any(|c| c == code),
        "no {code} finding in JSON {:?}:\n{}",
        codes(r),
        r.text
    );
    assert!(
        r.text.contains("FAIL  [") && r.text.contains(&format!("] {code}: ")),
        "{}",
        r.text
    );
}

fn no_secret(r: &Run, secrets: &[&str]) {
    let json = r.json.to_string();
    for s in secrets {
        assert!(
            !r.text.contains(s) && !json.contains(s),
            "secret in the report"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_report_and_each_fault_as_a_finding() {
    let cluster = Cluster::launch(Options::default()).await;
    let env = patient_env(&cluster);

    let healthy = diagnose(&env, &[]);
    assert_eq!(healthy.code, 0, "{}", healthy.text);
    assert_eq!(healthy.json["verdict"], "ok");
    assert_eq!(healthy.json["topology"]["live_shards"], 3);
    assert_eq!(healthy.json["latency"].as_array().unwrap().len(), 6);
    for section in [
        "== Reachability",
        "== Topology",
        "== Latency",
        "== Connections",
        "== Timeouts",
        "== OTLP",
        "== Sidecar settings",
        "OK    nothing wrong found",
    ] {
        assert!(
            healthy.text.contains(section),
            "{section} missing:\n{}",
            healthy.text
        );
    }
    assert!(healthy.text.contains("verified"), "{}", healthy.text);
    no_secret(&healthy, &[&cluster.password]);

    let mut wrong = env.clone();
    wrong.push(("REDIS_PASSWORD".into(), "Wr0ng-Diagnose-Pass".into()));
    let r = diagnose(&wrong, &[]);
    assert_finding(&r, "auth");
    no_secret(&r, &["Wr0ng-Diagnose-Pass", &cluster.password]);

    let mut ca = env.clone();
    ca.push((
        "REDIS_TLS_CA_FILE".into(),
        cluster.other_ca.display().to_string(),
    ));
    let r = diagnose(&ca, &[]);
    assert_finding(&r, "tls");

    // 3 shards live: drift against one count of 5 or bounds of 4..6, none inside auto
    // scaling's 3..10 (scaled in to its minimum).
    for declared in ["5", "4..6"] {
        let mut drift = env.clone();
        drift.push(("PROBE_EXPECTED_SHARDS".into(), declared.into()));
        assert_finding(&diagnose(&drift, &[]), "shard_drift");
    }
    let mut scaled_in = env.clone();
    scaled_in.push(("PROBE_EXPECTED_SHARDS".into(), "3..10".into()));
    let r = diagnose(&scaled_in, &[]);
    assert!(!codes(&r).iter().any(|c| c == "shard_drift"), "{}", r.text);
    assert!(r.text.contains("(3..10 declared)"), "{}", r.text);

    let mut capped = env.clone();
    capped.push(("PROBE_MAX_NODES".into(), "4".into()));
    let r = diagnose(&capped, &[]);
    assert_finding(&r, "topology_truncated");
    assert!(
        r.text
            .contains("the cluster reports 2 nodes more than the 4 redis-probe follows"),
        "{}",
        r.text
    );

    for i in 0..cluster.nodes.len() {
        assert!(
            cluster
                .cli(i, &["CONFIG", "SET", "maxclients", "1000"])
                .contains("OK")
        );
    }
    let mut pool = env.clone();
    pool.push(("REDIS_POOL_SIZE".into(), "1000".into()));
    let r = diagnose(&pool, &["--replicas", "72"]);
    assert_finding(&r, "ceiling_above_maxclients");
    assert!(
        r.text
            .contains("x 72 pods = 72000 on one node vs maxclients 1000"),
        "{}",
        r.text
    );

    let r = diagnose(&env, &["--probe-timeout", "100ms"]);
    assert_finding(&r, "attempt_above_probe_timeout");

    // One node made slow while diagnose measures.
    let cluster = std::sync::Arc::new(cluster);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let slow = {
        let (c, done) = (cluster.clone(), done.clone());
        std::thread::spawn(move || {
            // Busy most of the time until both measurements (text and JSON runs) are over.
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                c.cli(1, &["DEBUG", "SLEEP", "0.2"]);
            }
        })
    };
    let r = diagnose(&env, &[]);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    slow.join().unwrap();
    assert_finding(&r, "slow_node");
    assert!(
        r.text
            .contains(&format!("{}: median", cluster.nodes[1].addr())),
        "{}",
        r.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_expiring_soon() {
    let server = Cluster::launch(Options {
        names: CertNames::Loopback,
        cluster: false,
        cert_days: Some(7),
        ..Options::default()
    })
    .await;
    let r = diagnose(&patient_env(&server), &[]);
    assert_finding(&r, "cert_expiring");
    let days = r.json["reachability"]["nodes"][0]["tls"]["Ok"]["days_left"]
        .as_i64()
        .unwrap();
    assert!((5..=7).contains(&days), "{days}");

    // The running sidecar exports the same expiry.
    let sidecar = support::Sidecar::start(support::config(&server.env())).await;
    let series = format!(
        "redis_tls_cert_expiry_timestamp_seconds{{node=\"{}\"}}",
        server.nodes[0].addr()
    );
    let start = std::time::Instant::now();
    let expiry = loop {
        if let Some(v) = support::sample(&sidecar.metrics().await, &series) {
            break v;
        }
        if start.elapsed() > std::time::Duration::from_secs(15) {
            panic!("{series} never exported:\n{}", sidecar.metrics().await);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let days_left = (expiry - now) / 86400.0;
    assert!((6.0..=7.01).contains(&days_left), "{days_left}");
    sidecar.stop().await;
}
