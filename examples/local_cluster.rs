//! Runs redis-probe against a real local Redis Cluster that this example starts for you:
//! 6 `redis-server` processes (3 primaries, 3 replicas) on free loopback ports, TLS only, with a
//! password and certificates generated on the spot.
//!
//! ```text
//! scripts/run-local            # installs redis-server if missing, then runs this
//! cargo run --example local_cluster
//! cargo run --example local_cluster -- --cluster-only   # cluster only; prints the env to use
//! ```
//!
//! The sidecar listens on `PROBE_LISTEN` (default `127.0.0.1:8081`); every other `PROBE_*`
//! variable applies too. Stop with Ctrl-C: the cluster and its temp dir go with it.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;

use redis_probe::config::{Config, EnvVars};

#[tokio::main]
async fn main() {
    let cluster_only = std::env::args().any(|a| a == "--cluster-only");
    let cluster =
        tokio::task::spawn_blocking(|| support::Cluster::start(support::Options::default()))
            .await
            .expect("starting the cluster");

    let env_file = cluster.dir.path().join("redis-probe.env");
    let mut f = std::fs::File::create(&env_file).unwrap();
    for (k, v) in cluster.connection_env() {
        writeln!(f, "{k}={v}").unwrap();
    }
    println!(
        "Redis Cluster up: {}",
        cluster
            .nodes
            .iter()
            .map(|n| n.addr())
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("Sidecar settings: {}", env_file.display());
    println!(
        "redis-cli: redis-cli --tls --cacert {} -a '{}' -p {}",
        cluster.pki.ca.display(),
        cluster.password,
        cluster.nodes[0].port
    );

    if cluster_only {
        println!(
            "Cluster only; start the sidecar with: env $(cat {}) redis-probe",
            env_file.display()
        );
        let _ = tokio::signal::ctrl_c().await;
        return;
    }

    // examples/local-cluster.toml, under the cluster's address, CA and password, under the
    // process environment (PROBE_LISTEN, PROBE_INTERVAL, ...).
    let mut vars: Vec<(String, String)> = cluster.connection_env();
    vars.extend(std::env::vars().filter(|(k, _)| k.starts_with("PROBE_")));
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/local-cluster.toml");
    let config = match Config::from_sources(&vars.into_iter().collect::<EnvVars>(), Some(&file)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("invalid configuration:\n{e}");
            std::process::exit(64);
        }
    };
    redis_probe::logging::init(&config.log);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .expect("binding PROBE_LISTEN");
    println!(
        "redis-probe on http://{}/readyz?verbose  /livez  /metrics  (Ctrl-C stops)",
        listener.local_addr().unwrap()
    );
    redis_probe::run(&config, listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .expect("redis-probe");
}
