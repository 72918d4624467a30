//! Checks beside Redis: the app's readiness folded into /readyz, and the OTLP collector checked
//! without ever gating readiness. Stub servers stand in for the app and the collector.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{Cluster, Options, Sidecar, config, sample};

/// A tiny HTTP server answering every request with `status`; records request lines.
struct Stub {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
}

async fn stub(http2: bool) -> Stub {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let status = Arc::new(AtomicU16::new(200));
    let seen = Arc::new(std::sync::Mutex::new(vec![]));
    let (st, sn) = (status.clone(), seen.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (st, sn) = (st.clone(), sn.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let ct = req
                            .headers()
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        sn.lock().unwrap().push(format!(
                            "{} {} {ct}",
                            req.method(),
                            req.uri().path()
                        ));
                        let code = st.load(Ordering::SeqCst);
                        async move {
                            let mut rsp = Response::new(Full::new(Bytes::from_static(b"{}")));
                            *rsp.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
                            if http2 {
                                rsp.headers_mut()
                                    .insert("content-type", "application/grpc".parse().unwrap());
                                rsp.headers_mut()
                                    .insert("grpc-status", "0".parse().unwrap());
                            }
                            Ok::<_, Infallible>(rsp)
                        }
                    });
                let io = TokioIo::new(stream);
                if http2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                }
            });
        }
    });
    Stub { addr, status, seen }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_readiness_gates_and_the_collector_never_does() {
    let server = Cluster::launch(Options::standalone()).await;
    let app = stub(false).await;
    let collector = stub(false).await;
    let mut env = server.env();
    env.extend(
        [
            (
                "PROBE_UPSTREAM_READYZ",
                format!("http://{}/readyz", app.addr),
            ),
            ("PROBE_UPSTREAM_FAILURE_THRESHOLD", "2".into()),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://{}", collector.addr),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    // The collector check is opt-in: the app's ConfigMap alone (OTEL_EXPORTER_OTLP_ENDPOINT)
    // does not make every pod dial the collector.
    let quiet = Sidecar::start(config(&env)).await;
    quiet
        .wait_body(
            "/readyz?verbose",
            200,
            "[+]app ok\n",
            Duration::from_secs(15),
        )
        .await;
    // The collector check would run on the app check's schedule: three app checks are three
    // chances for it to dial.
    support::eventually(Duration::from_secs(15), "3 app checks", || {
        let n = app
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("GET /readyz"))
            .count();
        std::future::ready(support::holds(n >= 3, || n.to_string()))
    })
    .await;
    let m = quiet.metrics().await;
    assert!(!m.contains("check=\"otlp\""), "{m}");
    assert!(!quiet.get("/readyz?verbose").await.1.contains("otlp"));
    quiet.stop().await;
    assert!(collector.seen.lock().unwrap().is_empty());
    env.push(("PROBE_OTLP_CHECK".into(), "true".into()));
    let sidecar = Sidecar::start(config(&env)).await;
    sidecar
        .wait_body(
            "/readyz?verbose",
            200,
            "[+]app ok\n",
            Duration::from_secs(15),
        )
        .await;
    let body = sidecar
        .wait_body(
            "/readyz?verbose",
            200,
            "[+]otlp ok\n",
            Duration::from_secs(15),
        )
        .await
        .1;
    assert!(body.starts_with("[+]redis ok\n"), "{body}");
    assert!(
        app.seen
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("GET /readyz"))
    );
    assert!(
        collector
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|l| l == "POST /v1/metrics application/x-protobuf"),
        "{:?}",
        collector.seen.lock().unwrap()
    );

    // The app says 503: after its threshold the pod is not ready.
    app.status.store(503, Ordering::SeqCst);
    let body = sidecar
        .wait_body(
            "/readyz",
            503,
            "[-]app failed: 503\n",
            Duration::from_secs(15),
        )
        .await
        .1;
    assert!(body.contains("[+]redis ok\n"), "{body}");
    assert_eq!(sidecar.get("/readyz/app").await.0, 503);
    assert_eq!(sidecar.get("/readyz?exclude=app").await.0, 200);
    assert_eq!(sidecar.get("/livez").await.0, 200);
    let m = sidecar.metrics().await;
    assert_eq!(
        sample(&m, "redis_probe_check_up{check=\"app\"}"),
        Some(0.0),
        "{m}"
    );
    assert!(
        sample(
            &m,
            "redis_probe_check_failures_total{check=\"app\",reason=\"http_status\"}"
        )
        .unwrap()
            >= 2.0,
        "{m}"
    );
    app.status.store(200, Ordering::SeqCst);
    sidecar
        .wait_body("/readyz", 200, "ok", Duration::from_secs(15))
        .await;

    // The collector fails: shown, counted, and /readyz stays 200.
    collector.status.store(404, Ordering::SeqCst);
    let body = sidecar
        .wait_body(
            "/readyz?verbose",
            200,
            "[-]otlp failed: 404",
            Duration::from_secs(15),
        )
        .await
        .1;
    assert!(
        body.contains("(non-critical)\n") && body.ends_with("readyz check passed\n"),
        "{body}"
    );
    let m = sidecar.metrics().await;
    assert_eq!(
        sample(&m, "redis_probe_check_up{check=\"otlp\"}"),
        Some(0.0),
        "{m}"
    );
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_down_and_grpc_collector() {
    let server = Cluster::launch(Options::standalone()).await;
    let down = support::free_ports(1)[0];
    let mut env = server.env();
    env.push((
        "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
        format!("http://127.0.0.1:{down}"),
    ));
    env.push(("PROBE_OTLP_CHECK".into(), "true".into()));
    let sidecar = Sidecar::start(config(&env)).await;
    let body = sidecar
        .wait_body(
            "/readyz?verbose",
            200,
            "[-]otlp failed: ",
            Duration::from_secs(15),
        )
        .await
        .1;
    assert!(body.contains("(non-critical)"), "{body}");
    let m = sidecar.metrics().await;
    assert!(
        sample(
            &m,
            "redis_probe_check_failures_total{check=\"otlp\",reason=\"connection_refused\"}"
        )
        .unwrap()
            >= 1.0,
        "{m}"
    );
    sidecar.stop().await;

    // OTLP/gRPC: an empty Export over HTTP/2 answered with grpc-status 0.
    let grpc = stub(true).await;
    let mut env = server.env();
    env.push((
        "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
        format!("http://{}", grpc.addr),
    ));
    env.push(("PROBE_OTLP_CHECK".into(), "true".into()));
    env.push(("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "grpc".into()));
    let sidecar = Sidecar::start(config(&env)).await;
    sidecar
        .wait_body(
            "/readyz?verbose",
            200,
            "[+]otlp ok\n",
            Duration::from_secs(15),
        )
        .await;
    assert!(
        grpc.seen
            .lock()
            .unwrap()
            .iter()
            .any(|l| l == "POST /opentelemetry.proto.collector.metrics.v1.MetricsService/Export application/grpc"),
        "{:?}",
        grpc.seen.lock().unwrap()
    );
    sidecar.stop().await;
}

#[test]
fn otlp_lint_findings_are_listed_by_check_config() {
    let out = support::binary_command(None, [("PATH", "/usr/bin")])
        .env("REDIS_ADDRESS", "127.0.0.1:6379")
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://otel-collector-collector.otel-collector.svc.cluster.local:4317",
        )
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .arg("--check-config")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("# warning: OTLP:") && text.contains("(grpc_port_with_http)"),
        "{text}"
    );
}

/// `diagnose` reports the OTLP exporter the app is configured with, whether or not the
/// sidecar's own collector check is on: the endpoint and protocol, one empty export tried, and
/// the lint's findings (the incident's port/protocol mismatch) in the same section.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnose_reports_the_configured_otlp_exporter() {
    let server = Cluster::launch(Options::standalone()).await;
    let collector = stub(false).await;
    let mut env = server.patient_env();
    env.push((
        "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
        format!("http://{}", collector.addr),
    ));
    env.push(("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/protobuf".into()));
    let (_, report) = tokio::task::spawn_blocking(move || {
        support::run_binary(None, &env, &["diagnose", "--duration", "1s"])
    })
    .await
    .unwrap();
    let section = report
        .split("== OTLP")
        .nth(1)
        .unwrap_or_else(|| panic!("no OTLP section:\n{report}"));
    assert!(
        section.contains(&format!("http://{}", collector.addr))
            && section.contains("(http/protobuf): one empty export accepted"),
        "{report}"
    );
    assert!(!report.contains("no OTLP endpoint configured"), "{report}");
    assert!(
        collector
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("POST /v1/metrics")),
        "{:?}",
        collector.seen.lock().unwrap()
    );

    // The incident's setting: the gRPC port with the HTTP protocol.
    let mut env = server.patient_env();
    env.push((
        "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
        "http://127.0.0.1:4317".into(),
    ));
    env.push(("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/protobuf".into()));
    let (code, report) = tokio::task::spawn_blocking(move || {
        support::run_binary(None, &env, &["diagnose", "--duration", "1s"])
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "{report}");
    let section = report.split("== OTLP").nth(1).unwrap();
    assert!(
        section.contains("lint: ") && section.contains("4317"),
        "{report}"
    );
    assert!(report.contains("otlp_setting"), "{report}");
}
