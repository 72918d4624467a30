//! TLS verification against real nodes: server name override, wrong CA, and a standalone server.

mod support;

use std::time::Duration;

use support::{CertNames, Cluster, HOST_ONLY_NAME, Options, Sidecar, config, sample, wait_reason};

/// Nodes announced by IP, certificates naming only a host: verification needs
/// `REDIS_TLS_SERVER_NAME`, and fails with reason `tls` without it or with a wrong CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_name_and_wrong_ca() {
    let cluster = Cluster::launch(Options {
        names: CertNames::HostOnly,
        cluster: true,
        ..Options::default()
    })
    .await;

    let mut env = cluster.env();
    env.push(("REDIS_TLS_SERVER_NAME".into(), HOST_ONLY_NAME.into()));
    let named = Sidecar::start(config(&env)).await;
    named
        .wait_status("/readyz", 200, Duration::from_secs(30))
        .await;
    let m = named.metrics().await;
    assert_eq!(
        m.matches("redis_node_up{").filter(|_| true).count(),
        6,
        "{m}"
    );
    named.stop().await;

    let unnamed = Sidecar::start(config(&cluster.env())).await;
    wait_reason(&unnamed, "tls", Duration::from_secs(15)).await;
    let m = unnamed.metrics().await;
    assert!(
        sample(
            &m,
            "redis_health_check_attempt_failures_total{reason=\"tls\"}"
        )
        .unwrap()
            >= 1.0,
        "{m}"
    );
    unnamed.stop().await;

    let mut env = cluster.env();
    env.push(("REDIS_TLS_SERVER_NAME".into(), HOST_ONLY_NAME.into()));
    env.push((
        "REDIS_TLS_CA_FILE".into(),
        cluster.other_ca.display().to_string(),
    ));
    let wrong_ca = Sidecar::start(config(&env)).await;
    wait_reason(&wrong_ca, "tls", Duration::from_secs(15)).await;
    wrong_ca.stop().await;
}

/// `REDIS_CLUSTER_MODE=false`: one TLS server, PINGed as a primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_server() {
    let server = Cluster::launch(Options::standalone()).await;
    let sidecar = Sidecar::start(config(&server.env())).await;
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(30))
        .await;
    let m = sidecar.metrics().await;
    let series = format!(
        "redis_node_info{{node=\"{}\",role=\"primary\"}}",
        server.nodes[0].addr()
    );
    assert_eq!(sample(&m, &series), Some(1.0), "{m}");
    sidecar.stop().await;
}

/// A plain-text client against a TLS-only port and a TLS client against nothing at all are
/// different failures: `tls` needs a handshake to fail, `connection_refused` needs no listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_is_connection_refused() {
    let port = support::free_ports(1)[0];
    let mut env: Vec<(String, String)> = vec![
        ("REDIS_ADDRESS".into(), format!("127.0.0.1:{port}")),
        ("PROBE_LISTEN".into(), "127.0.0.1:0".into()),
    ];
    env.extend(support::fast_timings());
    let sidecar = Sidecar::start(config(&env)).await;
    wait_reason(&sidecar, "connection_refused", Duration::from_secs(15)).await;
    assert_eq!(sidecar.get("/livez").await.0, 200);
    sidecar.stop().await;
}

/// A standalone TLS server that requires a client certificate signed by its CA.
async fn mtls_server() -> Cluster {
    mtls_server_valid_for(None).await
}

/// As [`mtls_server`], the node certificate (also a client certificate of its CA) valid for
/// `days` when given.
async fn mtls_server_valid_for(days: Option<i64>) -> Cluster {
    Cluster::launch(Options {
        names: CertNames::Loopback,
        cluster: false,
        mtls: true,
        cert_days: days,
        ..Options::default()
    })
    .await
}

/// Nodes that require a client certificate: without `REDIS_TLS_CERT_FILE` the handshake fails
/// (`tls`), with it the server is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls() {
    let server = mtls_server().await;
    let anonymous = Sidecar::start(config(&server.env())).await;
    let body = wait_failure(&anonymous).await;
    assert!(body.contains("[-]redis failed: tls\n"), "{body}");
    anonymous.stop().await;

    let mut env = server.env();
    env.push((
        "REDIS_TLS_CERT_FILE".into(),
        server.pki.cert.display().to_string(),
    ));
    env.push((
        "REDIS_TLS_KEY_FILE".into(),
        server.pki.key.display().to_string(),
    ));
    let with_cert = Sidecar::start(config(&env)).await;
    with_cert
        .wait_status("/readyz", 200, Duration::from_secs(30))
        .await;
    with_cert.stop().await;
}

async fn wait_failure(sidecar: &Sidecar) -> String {
    support::eventually(Duration::from_secs(15), "a check fails", || async {
        let (_, body) = sidecar.get("/readyz?verbose").await;
        if body.contains("[-]redis failed: ") && !body.contains("no check has passed yet") {
            Ok(body)
        } else {
            Err(body)
        }
    })
    .await
}

/// cert-manager (or the kubelet, for a Secret volume) rotates the client certificate by
/// swapping a `..data` symlink: the sidecar takes the new certificate and key up within a
/// check, without a restart, and exports the client certificate's expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_rotates_without_a_restart() {
    // The new certificate expires in 30 days; the stranger's (rcgen's default) in 4096.
    let server = mtls_server_valid_for(Some(30)).await;
    // A mounted Secret: tls.crt and tls.key link through ..data to the current version.
    let mount = tempfile::tempdir().unwrap();
    let m = mount.path();
    std::fs::create_dir_all(m.join("stranger")).unwrap();
    let stranger = support::Pki::generate(&m.join("stranger"), CertNames::Loopback, "client");
    let version = |name: &str, pki_cert: &std::path::Path, pki_key: &std::path::Path| {
        let dir = m.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(pki_cert, dir.join("tls.crt")).unwrap();
        std::fs::copy(pki_key, dir.join("tls.key")).unwrap();
    };
    version("v1", &stranger.cert, &stranger.key);
    version("v2", &server.pki.cert, &server.pki.key);
    let point_data_at = |name: &str| {
        let tmp = m.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(name, &tmp).unwrap();
        std::fs::rename(&tmp, m.join("..data")).unwrap();
    };
    point_data_at("v1");
    for f in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), m.join(f)).unwrap();
    }
    let mut env = server.env();
    env.push((
        "REDIS_TLS_CERT_FILE".into(),
        m.join("tls.crt").display().to_string(),
    ));
    env.push((
        "REDIS_TLS_KEY_FILE".into(),
        m.join("tls.key").display().to_string(),
    ));
    let sidecar = Sidecar::start(config(&env)).await;
    let body = wait_failure(&sidecar).await;
    assert!(
        body.contains("[-]redis failed: tls\n"),
        "a certificate of another CA: {body}"
    );
    point_data_at("v2");
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(30))
        .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let m = sidecar.metrics().await;
    let expiry = sample(&m, "redis_tls_client_cert_expiry_timestamp_seconds")
        .unwrap_or_else(|| panic!("no client certificate expiry:\n{m}"));
    let in_30_days = now + 30.0 * 86400.0;
    assert!(
        (expiry - in_30_days).abs() < 86400.0,
        "{expiry} is not the new certificate's expiry (about {in_30_days})"
    );
    sidecar.stop().await;
}

/// With a CA file configured, the system trust store is never read: a broken one (here a
/// corrupt `SSL_CERT_FILE`) does not fail the dials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_system_store_does_not_matter_with_a_ca_file() {
    let server = Cluster::launch(Options::standalone()).await;
    let bundle = server.dir.path().join("corrupt-bundle.pem");
    std::fs::write(
        &bundle,
        "-----BEGIN CERTIFICATE-----\nnot a certificate at all!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let mut env = server.env();
    env.push(("SSL_CERT_FILE".into(), bundle.display().to_string()));
    let sidecar = Sidecar::spawn(&env).await;
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(30))
        .await;
    sidecar.stop().await;
}
