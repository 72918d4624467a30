//! `examples/embedded.rs`, an app serving redis-probe from its own hyper server, exports the
//! same metric families as the `redis-probe` binary: both go through the library's one
//! start-up wiring (`redis_probe::spawn`), so neither can silently lose a producer.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::{Cluster, Options, Sidecar, with_vars};

/// The example's executable, which `cargo build --example embedded` (in scripts/test) puts next to the
/// tests' own.
fn embedded_example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir.join("examples").join("embedded");
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build --example embedded` (scripts/test does) before `cargo test`",
        path.display()
    );
    // A stale example would compare an old build: it must be newer than every file it is
    // built from (the library's sources and its own).
    let built = std::fs::metadata(&path).unwrap().modified().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let own = root.join("examples/embedded.rs");
    let own_time = std::fs::metadata(&own).unwrap().modified().unwrap();
    let mut newest = Some((own_time, own));
    let mut dirs = vec![root.join("src")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                let m = e.metadata().unwrap().modified().unwrap();
                if newest.as_ref().is_none_or(|(t, _)| m > *t) {
                    newest = Some((m, p));
                }
            }
        }
    }
    let (changed, file) = newest.unwrap();
    assert!(
        built >= changed,
        "{} is older than {}: rebuild it with `cargo build --example embedded`",
        path.display(),
        file.display()
    );
    path
}

/// The metric families an exposition declares (`# TYPE name kind`).
fn families(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn embedded_example_exports_what_the_binary_exports() {
    let cluster = Cluster::start(Options::default());
    let closed_port = support::free_ports(1)[0];
    let env = with_vars(
        cluster.patient_env(),
        &[
            ("PROBE_EXPECTED_SHARDS", "3".to_string()),
            ("REDIS_POOL_SIZE", "10".to_string()),
            ("PROBE_POOL_INTERVAL", "1s".to_string()),
            ("PROBE_INFO_INTERVAL", "1s".to_string()),
            // A collector that is not there: the check exists (and fails, never gating).
            ("PROBE_OTLP_CHECK", "true".to_string()),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{closed_port}"),
            ),
        ],
    );
    let binary = Sidecar::spawn(&env).await;
    let example = embedded_example();
    let embedded = Sidecar::spawn_program(example.to_str().unwrap(), &env, "APP_LISTEN").await;
    for s in [&binary, &embedded] {
        s.wait_status("/readyz", 200, Duration::from_secs(30)).await;
    }
    // Families with labels appear with their first series (the certificate watcher's after the
    // first check, the pool's after the first count): wait for the ones that come last.
    let last = [
        "redis_tls_cert_expiry_timestamp_seconds",
        "redis_pool_node_conns",
        "redis_connected_clients",
        "redis_probe_check_up",
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let (from_binary, from_embedded) = loop {
        let b = families(&binary.metrics().await);
        let e = families(&embedded.metrics().await);
        let complete = |f: &BTreeSet<String>| last.iter().all(|n| f.contains(*n));
        if (complete(&b) && b == e) || Instant::now() > deadline {
            break (b, e);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for name in last {
        assert!(from_binary.contains(name), "binary lacks {name}");
    }
    let only_binary: Vec<_> = from_binary.difference(&from_embedded).collect();
    let only_embedded: Vec<_> = from_embedded.difference(&from_binary).collect();
    assert!(
        only_binary.is_empty() && only_embedded.is_empty(),
        "only the binary: {only_binary:?}\nonly the embedded example: {only_embedded:?}\nexample's output:\n{}",
        embedded.logs()
    );
    let (status, body) = embedded.get("/").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "hello from the app\n"),
        "the app's own route"
    );
    drop(embedded);
    binary.stop().await;
}
