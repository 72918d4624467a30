//! `REDIS_PASSWORD_FILE`: a rotated token is picked up without a restart.

mod support;

use std::time::Duration;

use support::{Cluster, Options, Sidecar, config, sample};

/// A cluster, its token in a file, and a ready sidecar reading `REDIS_PASSWORD_FILE`.
async fn ready_with_token_file() -> (Cluster, std::path::PathBuf, Sidecar) {
    let cluster = Cluster::launch(Options::default()).await;
    let token_file = cluster.dir.path().join("secret/auth-token");
    mount_token(&token_file, &cluster.password);
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

/// Writes `token` as a kubelet updates a mounted Secret: a new version directory, the `..data`
/// symlink swapped to it atomically, the file a symlink through `..data`.
fn mount_token(file: &std::path::Path, token: &str) {
    let dir = file.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let version = format!("..v{}", std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos());
    std::fs::create_dir(dir.join(&version)).unwrap();
    std::fs::write(dir.join(&version).join("auth-token"), format!("{token}\n")).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if std::fs::symlink_metadata(file).is_err() {
        std::os::unix::fs::symlink("..data/auth-token", file).unwrap();
    }
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

    mount_token(&token_file, new);
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
    let checks = |m: &str| sample(m, "redis_health_checks_total").unwrap_or(0.0);
    let before = checks(&sidecar.metrics().await);
    mount_token(&token_file, revoked);
    sidecar
        .wait_metric(
            "redis_health_check_attempt_failures_total{reason=\"auth\"}",
            |v| v >= 1.0,
            Duration::from_secs(30),
        )
        .await;
    // At the next check: the one in flight at the swap may still use the old token.
    let after = checks(&sidecar.metrics().await);
    assert!(
        after <= before + 2.0,
        "taken up after {} checks, not the next",
        after - before
    );
    support::wait_reason(&sidecar, "auth", Duration::from_secs(30)).await;
    mount_token(&token_file, &cluster.password);
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(30))
        .await;
    let all = sidecar.get("/readyz?verbose").await.1 + &sidecar.metrics().await;
    assert!(!all.contains(revoked) && !all.contains(&cluster.password));
    sidecar.stop().await;
}
