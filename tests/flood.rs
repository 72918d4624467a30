//! Kubelet-style probes keep answering whatever other clients do: 600 keep-alive clients
//! polling `/livez`, 64 clients that pipeline `GET /metrics` and never read, and a hammer on
//! `/metrics`, all at once against the real binary and a real cluster.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::cgroup::CpuLimit;
use support::kubelet::probe_for;
use support::{Cluster, Options, Sidecar, sample};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

/// Reads one response on a keep-alive connection: its status, the body skipped.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    let eof = || std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(eof());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(eof());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..head_end + length);
    Ok(status)
}

/// A keep-alive client: `GET /livez` every 4 s, re-opened when the server closes it.
async fn poller(addr: SocketAddr, first: Duration, mut stop: watch::Receiver<bool>) {
    tokio::time::sleep(first).await;
    while !*stop.borrow() {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut buf = vec![];
        loop {
            let asked = s.write_all(b"GET /livez HTTP/1.1\r\nHost: t\r\n\r\n").await;
            if asked.is_err() || read_response(&mut s, &mut buf).await.is_err() {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(4)) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// Pipelines `GET /metrics` with a 4 KiB receive buffer and never reads; returns how long the
/// server took to cut the connection.
/// Returns how long its writes had been stalled when the server cut it loose.
async fn pipeliner(addr: SocketAddr) -> Duration {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    let requests = "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n".repeat(64);
    let mut last_progress = Instant::now();
    while s.write_all(requests.as_bytes()).await.is_ok() {
        last_progress = Instant::now();
    }
    last_progress.elapsed()
}

/// `GET /metrics` on one keep-alive connection, as fast as answers come (with a 1 ms breath, so
/// the test's own process does not starve the probing thread on a 2-core machine).
async fn hammer(addr: SocketAddr, stop: watch::Receiver<bool>, done: Arc<AtomicUsize>) {
    while !*stop.borrow() {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            continue;
        };
        let mut buf = vec![];
        while !*stop.borrow() {
            let asked = s
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
                .await;
            if asked.is_err() || read_response(&mut s, &mut buf).await.is_err() {
                break;
            }
            done.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_probes_answer_through_a_flood() {
    let cluster = Cluster::launch(Options::default()).await;
    let sidecar = Sidecar::spawn(&cluster.patient_env()).await;
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(30))
        .await;
    let addr = sidecar.addr;
    let (stop, stopping) = watch::channel(false);
    let mut load = tokio::task::JoinSet::new();
    for i in 0..600u64 {
        // Spread over the first 4 s, as clients that started at different times.
        let first = Duration::from_millis(i * 4000 / 600);
        load.spawn(poller(addr, first, stopping.clone()));
    }
    let scrapes = Arc::new(AtomicUsize::new(0));

    for _ in 0..4 {
        load.spawn(hammer(addr, stopping.clone(), scrapes.clone()));
    }
    let pipeliners: Vec<_> = (0..64).map(|_| tokio::spawn(pipeliner(addr))).collect();

    let prober = probe_for(addr, 20);
    let probed = tokio::task::spawn_blocking(move || prober.join().unwrap())
        .await
        .unwrap();
    let _ = stop.send(true);
    println!(
        "{}; {} scrapes by the hammer",
        probed.held(),
        scrapes.load(Ordering::Relaxed)
    );
    let scrapes = scrapes.load(Ordering::Relaxed);
    assert!(
        scrapes > 100,
        "the hammer hardly ran: the flood was not one"
    );
    // Every client that stopped reading was cut loose, within the write timeout and the
    // eviction grace of becoming stuck (with room for a loaded machine).
    let mut slowest_cut = Duration::ZERO;
    for p in pipeliners {
        let cut = tokio::time::timeout(Duration::from_secs(30), p)
            .await
            .expect("a pipelining client that never reads was never cut loose")
            .unwrap();
        assert!(
            cut < Duration::from_secs(30),
            "cut {cut:?} after its writes stalled"
        );
        slowest_cut = slowest_cut.max(cut);
    }
    println!(
        "slowest stalled writer cut {slowest_cut:?} after its writes stalled (write timeout 5 s)"
    );
    load.shutdown().await;
    sidecar.stop().await;
}

/// The shape: the sidecar in a cgroup limited to 100m, `/metrics` hammered, the kubelet
/// probing. The sidecar finds its limit, paces scrapes to it, and every probe answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_under_a_100m_cpu_limit_while_metrics_is_hammered() {
    let cluster = Cluster::launch(Options::default()).await;
    let sidecar = Sidecar::spawn(&cluster.patient_env()).await;
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(30))
        .await;
    let unlimited = sidecar.metrics().await;
    assert_eq!(
        sample(&unlimited, "redis_probe_cpu_limit_cores"),
        Some(0.0),
        "{unlimited}"
    );
    let _limit = CpuLimit::apply(sidecar.pid().unwrap(), 100);
    let started = Instant::now();
    loop {
        let m = sidecar.metrics().await;
        if sample(&m, "redis_probe_cpu_limit_cores") == Some(0.1) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the 100m limit was not found in 20 s:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logs = sidecar.logs();
    assert!(logs.contains("\"scrapes_per_second\":100"), "{logs}");

    let addr = sidecar.addr;
    let (stop, stopping) = watch::channel(false);
    let scrapes = Arc::new(AtomicUsize::new(0));
    let hammering = Instant::now();
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        load.spawn(hammer(addr, stopping.clone(), scrapes.clone()));
    }
    let prober = probe_for(addr, 10);
    let probed = tokio::task::spawn_blocking(move || prober.join().unwrap())
        .await
        .unwrap();
    let _ = stop.send(true);
    let hammered = hammering.elapsed();
    let scrapes = scrapes.load(Ordering::Relaxed);
    println!(
        "under 100m: {}; {scrapes} scrapes in {hammered:?}",
        probed.held()
    );
    assert!(scrapes > 100, "the hammer hardly ran: {scrapes} scrapes");
    // Paced to the limit: 100 a second, whoever asks.
    let most = hammered.as_secs_f64() * 100.0 + 1.0;
    assert!(
        scrapes as f64 <= most,
        "{scrapes} scrapes in {hammered:?}: more than the pace allows"
    );
    load.shutdown().await;
    sidecar.stop().await;
}
