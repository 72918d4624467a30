//! `REDIS_PASSWORD_FILE`: a rotated token is picked up without a restart.

mod support;

use std::time::Duration;

use support::{Cluster, Options, Sidecar, config};

/// A cluster, its token in a file, and a ready sidecar reading `REDIS_PASSWORD_FILE`.
async fn ready_with_token_file() -> (Cluster, std::path::PathBuf, Sidecar) {
    let cluster = Cluster::launch(Options::default()).await;
    let token_file = cluster.dir.path().join("auth-token");
    std::fs::write(&token_file, format!("{}\n", cluster.password)).unwrap();
    let mut env: Vec<(String, String)> = cluster
        .env()
        .into_iter()
        .filter(|(k, _)| k != "REDIS_PASSWORD")
        .collect();
    env.push((
        "REDIS_PASSWORD_FILE".into(),
        token_file.display().to_string(),
    ));
    let sidecar = Sidecar::start(config(&env)).await;
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(30))
        .await;
    (cluster, token_file, sidecar)
}

/// The cluster's token changes (`requirepass` and `masterauth` on every node) and connections
/// drop; the file still holds the old token, so AUTH fails. Then the mounted secret is updated:
/// the next AUTH failure re-reads the file and the sidecar recovers on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_token_is_read_again_after_auth_fails() {
    let (cluster, token_file, sidecar) = ready_with_token_file().await;

    let new = "r0tated-Token-2";
    let cluster = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        for i in 0..cluster.nodes.len() {
            assert!(
                cluster
                    .cli(i, &["CONFIG", "SET", "masterauth", new])
                    .contains("OK")
            );
            assert!(
                cluster
                    .cli(i, &["CONFIG", "SET", "requirepass", new])
                    .contains("OK")
            );
        }
        cluster.password = new.into();
        for i in 0..cluster.nodes.len() {
            cluster.cli(i, &["CLIENT", "KILL", "TYPE", "normal"]);
        }
        cluster
    })
    .await
    .unwrap();
    support::wait_reason(&sidecar, "auth", Duration::from_secs(15)).await;

    std::fs::write(&token_file, format!("{new}\n")).unwrap();
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(30))
        .await;
    let all = sidecar.get("/readyz?verbose").await.1 + &sidecar.metrics().await;
    assert!(!all.contains(new));
    sidecar.stop().await;
    drop(cluster);
}

/// The mounted token changes while every connection still works (the kubelet swapped the
/// Secret): the sidecar reconnects with the file's token at the next check, so a revoked or
/// wrong token shows now (`auth`), not at the next connection drop, and the right one brings
/// it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_token_file_is_taken_up_at_once() {
    let (cluster, token_file, sidecar) = ready_with_token_file().await;
    let revoked = "Revoked-Token-9";
    std::fs::write(&token_file, format!("{revoked}\n")).unwrap();
    support::wait_reason(&sidecar, "auth", Duration::from_secs(30)).await;
    std::fs::write(&token_file, format!("{}\n", cluster.password)).unwrap();
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(30))
        .await;
    let all = sidecar.get("/readyz?verbose").await.1 + &sidecar.metrics().await;
    assert!(!all.contains(revoked) && !all.contains(&cluster.password));
    sidecar.stop().await;
}
