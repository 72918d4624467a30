//! The HTTP surface with a scripted probe: routing, methods, bad input, and handlers that never
//! wait on the probe.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// The mode to follow, and a flag raised when an attempt starts hanging.
struct Switch(tokio::sync::watch::Receiver<Mode>, Arc<AtomicBool>);

impl Probe for Switch {
    fn check(&mut self, deadline: Instant) -> impl Future<Output = CheckReport> + Send {
        let mode = *self.0.borrow();
        let hanging = self.1.clone();
        async move {
            match mode {
                Mode::Pass => CheckReport::passed(),
                Mode::Fail => CheckReport::failed(Reason::ConnectionReset, "reset"),
                Mode::Hang => {
                    hanging.store(true, Ordering::SeqCst);
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
    hanging: Arc<AtomicBool>,
    state: Arc<AppState>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(on_failure: OnFailure) -> Server {
    start_with(on_failure, Duration::from_millis(200)).await
}

/// A server whose health loop gives each attempt `attempt_timeout`.
async fn start_with(on_failure: OnFailure, attempt_timeout: Duration) -> Server {
    let (mode, rx) = tokio::sync::watch::channel(Mode::Pass);
    let schedule = Timing {
        interval: Duration::from_millis(50),
        jitter: 0.0,
        attempts: 1,
        attempt_timeout,
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
    let hanging = Arc::new(AtomicBool::new(false));
    let probe = Switch(rx, hanging.clone());
    let (l, health) = HealthLoop::new(probe, schedule, b, NoJitter, metrics.clone());
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
        hanging,
        state,
        _stop: stop,
    }
}

async fn wait(addr: std::net::SocketAddr, path: &str, status: u16) -> String {
    support::eventually(
        Duration::from_secs(10),
        &format!("GET {path} is {status}"),
        || async {
            let (s, b) = http_get(addr, path).await;
            if s == status {
                Ok(b)
            } else {
                Err(format!("{s} {b}"))
            }
        },
    )
    .await
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
    // Each attempt may hang for a minute: a handler that waited on it would take that long.
    let s = start_with(OnFailure::Unready, Duration::from_secs(60)).await;
    wait(s.addr, "/readyz", 200).await;
    s.mode.send(Mode::Hang).unwrap();
    support::eventually(Duration::from_secs(10), "an attempt hangs", || async {
        support::holds(s.hanging.load(Ordering::SeqCst), String::new)
    })
    .await;
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        for path in ["/readyz", "/livez", "/metrics"] {
            let t = std::time::Instant::now();
            let (status, body) =
                tokio::time::timeout(Duration::from_secs(10), http_get(s.addr, path))
                    .await
                    .unwrap_or_else(|_| panic!("GET {path} waited on the hanging probe"));
            slowest = slowest.max(t.elapsed());
            // The last published verdict stands while the attempt hangs.
            assert_eq!(status, 200, "GET {path}: {body}");
        }
    }
    println!("slowest answer while the probe hung: {slowest:?}");
}

#[tokio::test]
async fn an_attempt_that_hangs_is_a_timeout() {
    let s = start(OnFailure::Unready).await;
    wait(s.addr, "/readyz", 200).await;
    s.mode.send(Mode::Hang).unwrap();
    let body = wait(s.addr, "/readyz?verbose", 503).await;
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

/// The state of the server's side of the connection from `client` (a row of /proc/net/tcp with
/// the server's address local and the client's remote): `01` while established, anything else
/// (or gone) once the server has closed it.
fn server_side_state(server: std::net::SocketAddr, client: std::net::SocketAddr) -> Option<String> {
    let hex = |a: std::net::SocketAddr| match a {
        std::net::SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ),
        std::net::SocketAddr::V6(_) => unreachable!("loopback IPv4"),
    };
    let (local, remote) = (hex(server), hex(client));
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[1] == local && f[2] == remote)
        .map(|f| f[3].to_string())
}

/// A client has `HEADER_READ_TIMEOUT` (5 s) to send its request head: one that never finishes
/// it is cut loose then, not before.
#[tokio::test]
async fn a_request_head_that_never_ends_is_cut_after_5_s() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start(OnFailure::Unready).await;
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let sent = std::time::Instant::now();
    let mut buf = vec![];
    let _ = tokio::time::timeout(Duration::from_secs(30), c.read_to_end(&mut buf))
        .await
        .expect("a request head that never ends was never cut");
    let took = sent.elapsed();
    println!("unfinished head cut after {took:?}");
    assert!(
        took >= server::HEADER_READ_TIMEOUT - Duration::from_millis(100),
        "cut after {took:?}, before the client's 5 s"
    );
}

/// At 256 connections one more asks the oldest answered one to close; when that one is busy
/// (here: writing to a client that pipelines `/metrics` and never reads), it gets 1 s to
/// finish, then it is closed, well before its write timeout (5 s) would end it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_busy_connection_is_closed_after_1_s() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start(OnFailure::Unready).await;
    wait(s.addr, "/readyz", 200).await;
    // The oldest connection: answered once, then busy with answers it never reads.
    let mut busy = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let client = busy.local_addr().unwrap();
    busy.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 512];
    let n = busy.read(&mut first).await.unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    let pipelined = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2000);
    let (_read_half, mut write_half) = busy.into_split();
    let writer = tokio::spawn(async move {
        let _ = write_half.write_all(&pipelined).await;
        write_half
    });
    // The rest of the table, opened and left idle (never answered, so never evicted).
    let mut others = vec![];
    for _ in 0..server::MAX_CONNECTIONS - 1 {
        others.push(tokio::net::TcpStream::connect(s.addr).await.unwrap());
    }
    assert_eq!(server_side_state(s.addr, client).as_deref(), Some("01"));
    // One more: the oldest answered connection is asked to close.
    let asked = std::time::Instant::now();
    others.push(tokio::net::TcpStream::connect(s.addr).await.unwrap());
    support::eventually(
        Duration::from_secs(30),
        "the busy connection is closed",
        || {
            std::future::ready(match server_side_state(s.addr, client) {
                Some(state) if state == "01" => Err(state),
                _ => Ok(()),
            })
        },
    )
    .await;
    let took = asked.elapsed();
    println!("evicted busy connection closed after {took:?}");
    assert!(
        took < server::CLOSE_GRACE + Duration::from_secs(2),
        "closed after {took:?}: the 1 s grace did not hold (the write timeout is 5 s)"
    );
    writer.abort();
}
