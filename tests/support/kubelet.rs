//! The kubelet's probes, as it makes them: a new connection each, `Connection: close`, 1 s to
//! answer 200, on a thread of their own so the test's runtime cannot delay them. A replay runs
//! a [`Prober`] throughout and then asks whether the kubelet would have acted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What the kubelet does: a new connection, `Connection: close`, 1 s to answer 200. Blocking
/// I/O on a thread of its own, so the load generators' runtime cannot delay it.
pub fn kubelet_probe(addr: SocketAddr, path: &str) -> Result<Duration, String> {
    use std::io::{Read, Write};
    let started = Instant::now();
    let limit = Duration::from_secs(1);
    let fail = |e: std::io::Error| format!("{path}: {e} after {:?}", started.elapsed());
    let mut s = std::net::TcpStream::connect_timeout(&addr, limit).map_err(fail)?;
    let connected = started.elapsed();
    let fail = |e: std::io::Error| {
        format!(
            "{path}: {e} after {:?} (connected after {connected:?})",
            started.elapsed()
        )
    };
    let left = || {
        limit
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1))
    };
    s.set_write_timeout(Some(left())).map_err(fail)?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).map_err(fail)?;
    let mut rsp = vec![];
    let mut chunk = [0u8; 1024];
    loop {
        s.set_read_timeout(Some(left())).map_err(fail)?;
        match s.read(&mut chunk).map_err(fail)? {
            0 => break,
            n => rsp.extend_from_slice(&chunk[..n]),
        }
        if started.elapsed() > limit {
            return Err(format!("{path}: no answer within 1 s"));
        }
    }
    let rsp = String::from_utf8_lossy(&rsp);
    match rsp.split_whitespace().nth(1) {
        Some("200") if started.elapsed() <= limit => Ok(started.elapsed()),
        Some("200") => Err(format!("{path}: answered after {:?}", started.elapsed())),
        other => Err(format!("{path}: status {other:?}")),
    }
}

/// What [`probe_for`] saw, in order.
pub struct Probed {
    /// Each probe: its time, or why it failed.
    pub results: Vec<Result<Duration, String>>,
}

impl Probed {
    /// Fails when the kubelet would have acted: 3 failures in a row (its default
    /// failureThreshold), or more than 1 % of the probes failed. A single failed probe on a
    /// loaded 2-core machine running this very flood is tolerated and printed; the zero-failure
    /// figure is measured by benches/cpu.sh. Says how many and how fast (p50, p99).
    pub fn held(self) -> String {
        let total = self.results.len();
        let failures: Vec<&String> = self
            .results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .collect();
        let mut run = 0;
        for r in &self.results {
            run = if r.is_err() { run + 1 } else { 0 };
            assert!(run < 3, "3 probes in a row failed: {failures:?}");
        }
        assert!(
            failures.len() * 100 <= total,
            "{} of {total} probes failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(10)]
        );
        let mut answered: Vec<Duration> = self
            .results
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        answered.sort();
        let p = |q: f64| {
            let last = answered.len().saturating_sub(1);
            answered
                .get((last as f64 * q) as usize)
                .copied()
                .unwrap_or_default()
        };
        format!(
            "{total} probes, {} failed {:?}; p50 {:?}, p99 {:?}",
            failures.len(),
            failures,
            p(0.5),
            p(0.99)
        )
    }
}

/// Kubelet-style probes, 10 a second for `secs`, alternating `/readyz` and `/livez`, on a thread
/// of their own, so the load generators' runtime cannot delay them.
pub fn probe_for(addr: SocketAddr, secs: u64) -> std::thread::JoinHandle<Probed> {
    std::thread::spawn(move || {
        let mut results = vec![];
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(secs);
        let mut i = 0;
        while Instant::now() < until {
            let path = if i % 2 == 0 { "/readyz" } else { "/livez" };
            results
                .push(kubelet_probe(addr, path).map_err(|e| format!("at {:?}: {e}", t0.elapsed())));
            i += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        Probed { results }
    })
}

/// Probes `/readyz` ten times a second, kubelet-style, until stopped.
pub struct Prober {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Probed>,
}

impl Prober {
    /// Waits until the sidecar's `/readyz` says 200 (30 s at most), then starts probing: a
    /// replay's probes count from a ready pod, as the kubelet's would.
    pub async fn once_ready(sidecar: &super::Sidecar) -> Prober {
        sidecar
            .wait_status("/readyz", 200, Duration::from_secs(30))
            .await;
        Prober::start(sidecar.addr)
    }

    pub fn start(addr: SocketAddr) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut results = vec![];
            let t0 = Instant::now();
            while !stopping.load(Ordering::SeqCst) {
                results.push(
                    kubelet_probe(addr, "/readyz")
                        .map_err(|e| format!("at {:?}: {e}", t0.elapsed())),
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            Probed { results }
        });
        Prober { stop, thread }
    }

    /// Stops probing; what the probes saw.
    pub fn stop(self) -> Probed {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the prober")
    }
}

impl Probed {
    /// Probes sent and failed.
    pub fn counts(&self) -> (usize, usize) {
        let failed = self.results.iter().filter(|r| r.is_err()).count();
        (self.results.len(), failed)
    }
}
