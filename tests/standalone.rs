//! Cluster mode disabled: a primary and its replica behind a primary endpoint (a proxy the
//! test points at the primary, as ElastiCache's DNS name follows it), a Sentinel, and the
//! default cluster mode pointed at a server without cluster support.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{Cluster, Options, Sidecar, wait_reason, with_vars};

const BIN: &str = env!("CARGO_BIN_EXE_redis-probe");
const LIMIT: Duration = Duration::from_secs(20);

async fn wait_log(sidecar: &Sidecar, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sidecar.logs().contains(text) {
        assert!(
            Instant::now() < deadline,
            "no log line with {text:?}:\n{}",
            sidecar.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The roles swap (the old primary survives as a replica): the sidecar's connection, still to
/// the old primary, sees `role:slave` and fails as `not_primary` (the app's writes would fail
/// there); once the endpoint follows the new primary, the next dial reaches it and the pod is
/// ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_primary_is_not_ready_until_the_endpoint_follows() {
    let cluster = tokio::task::spawn_blocking(|| {
        Cluster::start(Options {
            cluster: false,
            replica: true,
            ..Options::default()
        })
    })
    .await
    .unwrap();
    let env = cluster.patient_env();
    assert!(env.contains(&("REDIS_CLUSTER_MODE".into(), "false".into())));
    let sidecar = Sidecar::spawn_binary(BIN, &env).await;
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(30))
        .await;

    let new_primary = cluster.nodes[1].port.to_string();
    assert!(cluster.cli(1, &["REPLICAOF", "NO", "ONE"]).contains("OK"));
    assert!(
        cluster
            .cli(0, &["REPLICAOF", "127.0.0.1", &new_primary])
            .contains("OK")
    );
    wait_reason(&sidecar, "not_primary", LIMIT).await;
    wait_log(&sidecar, "the server's role is slave, not master").await;

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
    let server = tokio::task::spawn_blocking(|| Cluster::start(Options::standalone()))
        .await
        .unwrap();
    let env = with_vars(server.env(), &[("REDIS_CLUSTER_MODE", "true")]);
    let sidecar = Sidecar::spawn_binary(BIN, &env).await;
    wait_reason(&sidecar, "cluster_mode_disabled", LIMIT).await;
    wait_log(&sidecar, "set REDIS_CLUSTER_MODE=false").await;
    sidecar.stop().await;

    let out = Command::new(BIN)
        .env_clear()
        .envs(env.iter().cloned())
        .args(["diagnose", "--duration", "1s"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("] wrong_server: "), "{text}");
}

/// A Sentinel answers PING like a server; pointed at one, the sidecar says so instead of
/// reporting ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_is_never_ready() {
    let (server, _) = support::binaries(support::Engine::Redis7);
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_ports(1)[0];
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(&conf, format!("bind 127.0.0.1\nport {port}\n")).unwrap();
    let mut cmd = Command::new(server);
    cmd.arg(&conf)
        .arg("--sentinel")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    support::die_with_parent(&mut cmd);
    let sentinel = Killed(cmd.spawn().unwrap());
    let mut env: Vec<(String, String)> = vec![
        ("REDIS_ADDRESS".into(), format!("127.0.0.1:{port}")),
        ("REDIS_CLUSTER_MODE".into(), "false".into()),
        ("PROBE_LISTEN".into(), "127.0.0.1:0".into()),
    ];
    env.extend(support::patient_timeouts());
    let sidecar = Sidecar::spawn_binary(BIN, &env).await;
    wait_reason(&sidecar, "sentinel", LIMIT).await;
    wait_log(&sidecar, "the address is a Sentinel").await;
    sidecar.stop().await;
    drop(sentinel);
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
