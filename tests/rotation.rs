//! `REDIS_PASSWORD_FILE`: a rotated token is picked up without a restart.

mod support;

use std::time::Duration;

use support::{CertNames, Cluster, Options, Sidecar, config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_token_is_read_again_after_auth_fails() {
    let server = tokio::task::spawn_blocking(|| {
        Cluster::start(Options {
            names: CertNames::Loopback,
            cluster: false,
            mtls: false,
        })
    })
    .await
    .unwrap();
    let token_file = server.dir.path().join("auth-token");
    std::fs::write(&token_file, format!("{}\n", server.password)).unwrap();
    let mut env: Vec<(String, String)> = server
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
        .wait_status("/readyz", 200, Duration::from_secs(15))
        .await;

    // The server's token changes and existing connections are dropped; the file still holds the
    // old token, so the sidecar fails with `auth`.
    let new = "r0tated-Token-2";
    assert!(
        server
            .cli(0, &["CONFIG", "SET", "requirepass", new])
            .contains("OK")
    );
    let mut server = server;
    server.password = new.into();
    server.cli(0, &["CLIENT", "KILL", "TYPE", "normal"]);
    let (_, body) = sidecar
        .wait_status("/readyz", 503, Duration::from_secs(15))
        .await;
    assert!(body.contains("[-]redis failed: auth"), "{body}");

    // The secret volume is updated: the next AUTH failure re-reads the file.
    std::fs::write(&token_file, format!("{new}\n")).unwrap();
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(15))
        .await;
    let all = sidecar.get("/readyz?verbose").await.1 + &sidecar.metrics().await;
    assert!(!all.contains(new));
    sidecar.stop().await;
}
