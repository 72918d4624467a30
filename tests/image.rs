//! The container image, built from the project's recipe (`scripts/image`: the Dockerfile's last
//! stage) and run with podman as the manifests run it: read-only root filesystem, UID 65532,
//! every capability dropped, no new privileges. It must serve `/livez` and `/readyz` against a
//! TLS + AUTH cluster, answer `diagnose` through `exec`, exit 0 on SIGTERM, and name an empty
//! trust store instead of failing every check as `tls` in silence.

mod support;

use std::time::{Duration, Instant};

use support::image::Images;
use support::{Cluster, Options, Sidecar, sample, with_vars};

const PATH: (&str, &str) = (
    "PATH",
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_serves_probes_read_only_as_65532_without_capabilities() {
    let cluster = Cluster::launch(Options::default()).await;
    let images = tokio::task::spawn_blocking(Images::build).await.unwrap();
    eprintln!("built: {}", images.built);

    // The image's own metadata: the user, the entrypoint, the version and revision labels the
    // binary also reports.
    let meta = images.podman_ok(&[
        "image",
        "inspect",
        &images.tag,
        "--format",
        "{{.Config.User}}|{{json .Config.Entrypoint}}|{{index .Config.Labels \"org.opencontainers.image.version\"}}|{{index .Config.Labels \"org.opencontainers.image.revision\"}}",
    ]);
    let meta: Vec<&str> = meta.trim().split('|').collect();
    assert_eq!(meta[0], "65532:65532", "{meta:?}");
    assert_eq!(meta[1], r#"["/usr/local/bin/redis-probe"]"#, "{meta:?}");
    assert_eq!(meta[2], env!("CARGO_PKG_VERSION"), "{meta:?}");
    assert!(!meta[3].is_empty() && meta[3] != "unknown", "{meta:?}");

    let ca = images.share(&cluster.pki.ca, "ca.pem");
    let env = with_vars(
        support::with_vars(cluster.patient_env(), &[PATH]),
        &[("REDIS_TLS_CA_FILE", ca.to_str().unwrap())],
    );
    let name = format!("redis-probe-{}", std::process::id());
    let script = images.run_script(&name, &[]);
    let started = Instant::now();
    let sidecar = Sidecar::spawn_program(script.to_str().unwrap(), &env, "PROBE_LISTEN").await;
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(60))
        .await;
    eprintln!("podman run to /readyz 200: {:?}", started.elapsed());
    let m = sidecar.metrics().await;
    assert_eq!(
        sample(&m, "redis_probe_config_warning{kind=\"no_trust_store\"}"),
        Some(0.0),
        "{m}"
    );

    // What the kernel says of the container's process, not what podman was asked for.
    let status = images.status_of(&name);
    for line in [
        "Uid:\t65532\t65532\t65532\t65532",
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "NoNewPrivs:\t1",
    ] {
        assert!(status.contains(line), "{line:?} not in:\n{status}");
    }

    let (passed, json, report) = images.diagnose(&name);
    assert!(passed, "diagnose failed:\n{report}");
    assert_eq!(json["verdict"], "ok", "{report}");

    // SIGTERM to `podman run` reaches the sidecar, which exits 0 (asserted by stop()).
    sidecar.stop().await;
}

/// TLS on, no CA file, and an image whose CA bundle is empty: the sidecar still starts and
/// serves `/livez`, and says why every check fails, at start, in a metric and in `diagnose`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_trust_store_is_named_at_start_and_by_diagnose() {
    let cluster = Cluster::launch(Options::default()).await;
    let images = tokio::task::spawn_blocking(Images::build).await.unwrap();
    let empty = tempfile::NamedTempFile::new().unwrap();
    let empty = images.share(empty.path(), "empty.pem");
    let env: Vec<(String, String)> = cluster
        .patient_env()
        .into_iter()
        .filter(|(k, _)| k != "REDIS_TLS_CA_FILE")
        .chain([(PATH.0.to_string(), PATH.1.to_string())])
        .collect();
    let name = format!("redis-probe-notrust-{}", std::process::id());
    let bundle = format!("{}:/etc/ssl/certs/ca-certificates.crt:ro", empty.display());
    let script = images.run_script(&name, &["-v", &bundle]);
    let sidecar = Sidecar::spawn_program(script.to_str().unwrap(), &env, "PROBE_LISTEN").await;

    sidecar
        .wait_log(
            "the system trust store holds no certificate",
            Duration::from_secs(10),
        )
        .await;
    sidecar
        .wait_metric(
            "redis_probe_config_warning{kind=\"no_trust_store\"}",
            |v| v == 1.0,
            Duration::from_secs(10),
        )
        .await;
    sidecar
        .wait_metric(
            "redis_health_check_attempt_failures_total{reason=\"tls\"}",
            |v| v >= 1.0,
            Duration::from_secs(30),
        )
        .await;
    let (passed, json, report) = images.diagnose(&name);
    assert!(!passed, "{report}");
    assert_eq!(json["findings"][0]["code"], "no_trust_store", "{report}");
    sidecar.stop().await;
}
