//! Kubelet-style probes keep answering whatever other clients do: 600 keep-alive clients
//! polling `/livez`, 64 clients that pipeline `GET /metrics` and never read, and a hammer on
//! `/metrics`, all at once against the real binary and a real cluster.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{Cluster, Options, Sidecar};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

const BIN: &str = env!("CARGO_BIN_EXE_redis-probe");

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
async fn pipeliner(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    let requests = "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n".repeat(64);
    while s.write_all(requests.as_bytes()).await.is_ok() {}
    started.elapsed()
}

/// `GET /metrics` back to back on one keep-alive connection.
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
        }
    }
}

/// What the kubelet does: a new connection, `Connection: close`, 1 s to answer 200.
async fn kubelet_probe(addr: SocketAddr, path: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let probe = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut rsp = vec![];
        s.read_to_end(&mut rsp).await.map_err(|e| e.to_string())?;
        let rsp = String::from_utf8_lossy(&rsp);
        match rsp.split_whitespace().nth(1) {
            Some("200") => Ok(()),
            other => Err(format!("status {other:?}")),
        }
    };
    match tokio::time::timeout(Duration::from_secs(1), probe).await {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(e)) => Err(format!("{path}: {e}")),
        Err(_) => Err(format!("{path}: no answer within 1 s")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_probes_answer_through_a_flood() {
    let cluster = Cluster::start(Options::default());
    let sidecar = Sidecar::spawn_binary(BIN, &cluster.patient_env()).await;
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

    let mut failures = vec![];
    let mut answered = vec![];
    let until = Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    while Instant::now() < until {
        let path = if i % 2 == 0 { "/readyz" } else { "/livez" };
        match kubelet_probe(addr, path).await {
            Ok(took) => answered.push(took),
            Err(e) => failures.push(e),
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(true);
    answered.sort();
    let p = |q: f64| answered[((answered.len() - 1) as f64 * q) as usize];
    println!(
        "{} probes, {} failed; p50 {:?}, p99 {:?}; {} scrapes by the hammer",
        answered.len() + failures.len(),
        failures.len(),
        p(0.5),
        p(0.99),
        scrapes.load(Ordering::Relaxed)
    );
    assert!(
        failures.is_empty(),
        "{} of {} probes failed: {:?}",
        failures.len(),
        answered.len() + failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(
        scrapes.load(Ordering::Relaxed) > 100,
        "the hammer hardly ran: the flood was not one"
    );
    // Every client that stopped reading was cut loose, within the write timeout and the
    // eviction grace of becoming stuck (with room for a loaded machine).
    for p in pipeliners {
        let cut = tokio::time::timeout(Duration::from_secs(30), p)
            .await
            .expect("a pipelining client that never reads was never cut loose")
            .unwrap();
        assert!(cut < Duration::from_secs(30), "{cut:?}");
    }
    load.shutdown().await;
    sidecar.stop().await;
}
