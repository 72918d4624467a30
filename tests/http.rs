//! The HTTP surface with a scripted probe: routing, methods, bad input, and handlers that never
//! wait on the probe.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis_probe::breaker;
use redis_probe::config::OnFailure;
use redis_probe::health::{HealthLoop, Timing};
use redis_probe::metrics::Metrics;
use redis_probe::probe::{CheckReport, Probe, Reason};
use redis_probe::schedule::NoJitter;
use redis_probe::server::{self, AppState};
use support::{http_get, http_raw, parse_response};
use tokio::time::Instant;

/// Passes, fails or hangs, as told through a watch channel.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Pass,
    Fail,
    Hang,
}

struct Switch(tokio::sync::watch::Receiver<Mode>);

impl Probe for Switch {
    fn check(&mut self, deadline: Instant) -> impl Future<Output = CheckReport> + Send {
        let mode = *self.0.borrow();
        async move {
            match mode {
                Mode::Pass => CheckReport::passed(),
                Mode::Fail => CheckReport::failed(Reason::ConnectionReset, "reset"),
                Mode::Hang => {
                    tokio::time::sleep_until(deadline + Duration::from_secs(3600)).await;
                    unreachable!()
                }
            }
        }
    }
}

struct Server {
    addr: std::net::SocketAddr,
    mode: tokio::sync::watch::Sender<Mode>,
    state: Arc<AppState>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(on_failure: OnFailure) -> Server {
    let (mode, rx) = tokio::sync::watch::channel(Mode::Pass);
    let schedule = Timing {
        interval: Duration::from_millis(50),
        jitter: 0.0,
        attempts: 1,
        attempt_timeout: Duration::from_millis(200),
        retry_backoff: Duration::from_millis(10),
    };
    let b = breaker::Settings {
        failure_threshold: 1,
        success_threshold: 1,
        open_duration: Duration::from_millis(100),
        open_duration_max: Duration::from_millis(100),
        jitter: 0.0,
    };
    let metrics = Arc::new(Metrics::new());
    let (l, health) = HealthLoop::new(Switch(rx), schedule, b, NoJitter, metrics.clone());
    tokio::spawn(l.run());
    let state = AppState::new(health, metrics, on_failure, vec![]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    Server {
        addr,
        mode,
        state,
        _stop: stop,
    }
}

async fn wait(addr: std::net::SocketAddr, path: &str, status: u16) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (s, b) = http_get(addr, path).await;
        if s == status {
            return b;
        }
        assert!(std::time::Instant::now() < deadline, "GET {path}: {s} {b}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn routes_methods_and_bad_input() {
    let s = start(OnFailure::Unready).await;
    wait(s.addr, "/readyz", 200).await;

    assert_eq!(http_get(s.addr, "/").await.0, 404);
    assert_eq!(http_get(s.addr, "/readyz/nope").await.0, 404);
    assert_eq!(
        http_get(s.addr, "/livez?verbose").await,
        (
            200,
            "[+]ping ok\n[+]healthloop ok\nlivez check passed\n".into()
        )
    );

    let raw = http_raw(
        s.addr,
        b"POST /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .await;
    assert_eq!(parse_response(&raw).0, 405);
    assert!(
        raw.to_ascii_lowercase().contains("allow: get, head"),
        "{raw}"
    );

    let raw = http_raw(
        s.addr,
        b"HEAD /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(parse_response(&raw), (200, String::new()));

    let raw = http_raw(s.addr, b"\x16\x03\x01\x00garbage that is not http\r\n\r\n").await;
    assert_eq!(parse_response(&raw).0, 400, "{raw}");

    let long = format!(
        "GET /readyz?{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(4000)
    );
    assert_eq!(
        parse_response(&http_raw(s.addr, long.as_bytes()).await).0,
        414
    );

    let huge = format!(
        "GET /readyz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(64 * 1024)
    );
    let status = parse_response(&http_raw(s.addr, huge.as_bytes()).await).0;
    assert!(
        status == 431 || status == 400,
        "oversized head answered {status}"
    );

    // The server is still fine after all of that.
    assert_eq!(http_get(s.addr, "/readyz").await, (200, "ok\n".into()));
}

#[tokio::test]
async fn readiness_follows_the_probe_and_degraded_mode_stays_200() {
    let s = start(OnFailure::Unready).await;
    wait(s.addr, "/readyz", 200).await;
    s.mode.send(Mode::Fail).unwrap();
    let body = wait(s.addr, "/readyz", 503).await;
    assert!(
        body.starts_with("[-]redis failed: connection_reset\n"),
        "{body}"
    );
    assert_eq!(http_get(s.addr, "/readyz?exclude=redis").await.0, 200);
    assert_eq!(http_get(s.addr, "/livez").await.0, 200);
    s.mode.send(Mode::Pass).unwrap();
    wait(s.addr, "/readyz", 200).await;

    let d = start(OnFailure::Degraded).await;
    wait(d.addr, "/readyz", 200).await;
    d.mode.send(Mode::Fail).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http_get(d.addr, "/readyz?verbose").await;
        assert_eq!(status, 200);
        if body.contains("[+]redis degraded: connection_reset") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
    }
    assert_eq!(
        http_get(d.addr, "/readyz").await,
        (200, "degraded\n".into())
    );
    let m = http_get(d.addr, "/metrics").await.1;
    assert!(m.contains("redis_up 0"), "{m}");
    assert!(m.contains("redis_probe_ready 1"), "{m}");
}

#[tokio::test]
async fn handlers_never_wait_on_a_hanging_probe() {
    let s = start(OnFailure::Unready).await;
    wait(s.addr, "/readyz", 200).await;
    s.mode.send(Mode::Hang).unwrap();
    // The loop is now stuck in an attempt for up to its timeout, again and again; every
    // request is still answered from the last published state.
    for _ in 0..20 {
        let (status, _) = tokio::time::timeout(Duration::from_secs(5), http_get(s.addr, "/readyz"))
            .await
            .expect("/readyz waited on the probe");
        assert!(status == 200 || status == 503);
        assert_eq!(http_get(s.addr, "/metrics").await.0, 200);
    }
    let body = wait(s.addr, "/readyz", 503).await;
    assert!(body.contains("[-]redis failed: timeout"), "{body}");
}

#[tokio::test]
async fn draining_turns_readyz_503_at_once() {
    let s = start(OnFailure::Unready).await;
    wait(s.addr, "/readyz", 200).await;
    s.state.start_draining();
    assert_eq!(
        http_get(s.addr, "/readyz").await,
        (
            503,
            "[+]redis ok\n[-]shutdown failed: shutting down\nreadyz check failed\n".into()
        )
    );
    assert_eq!(http_get(s.addr, "/livez").await.0, 200);
}

#[tokio::test]
async fn metrics_content_negotiation() {
    let s = start(OnFailure::Unready).await;
    let raw = http_raw(
        s.addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        raw.contains("application/openmetrics-text; version=1.0.0"),
        "{raw}"
    );
    assert!(raw.ends_with("# EOF\n"));
    let raw = http_raw(
        s.addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(raw.contains("text/plain; version=0.0.4"), "{raw}");
    assert!(
        raw.contains("# TYPE redis_health_checks_total counter"),
        "{raw}"
    );
}
