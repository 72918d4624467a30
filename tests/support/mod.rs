//! Test harness: real Redis and Valkey deployments (TLS, passwords, ACL users) on free
//! loopback ports, each in its own temp dir; the sidecar in process or as the real binary;
//! faults and timelines of them; and one way to wait for a condition.
//!
//! Every process started here is killed when its owner is dropped, including when a test
//! panics; child processes also get SIGKILL if the test process itself dies.

#![allow(dead_code)]

pub mod cgroup;
pub mod cluster;
pub mod engine;
pub mod faults;
pub mod image;
pub mod kubelet;
pub mod netns;
pub mod pki;
pub mod prometheus;
pub mod proxy;
pub mod sidecar;

pub use cluster::*;
pub use engine::*;
#[allow(unused_imports)]
pub use faults::{Fault, Timeline};
pub use pki::*;
pub use sidecar::*;

use std::collections::HashSet;
use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis_probe::config::{Config, EnvVars};

pub const PASSWORD: &str = "t0k3n-Sidecar-Secret-42";

/// The sidecar's binary: the one cargo built for these tests, or, in an example, the one
/// beside the examples' directory (`target/<profile>/redis-probe`).
pub fn bin() -> String {
    if let Some(b) = option_env!("CARGO_BIN_EXE_redis-probe") {
        return b.to_string();
    }
    let exe = std::env::current_exe().expect("the running program's path");
    let b = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("redis-probe"))
        .filter(|b| b.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no redis-probe binary beside {}: cargo build first",
                exe.display()
            )
        });
    b.display().to_string()
}

/// Fails the run, naming how to install it, when a tool is missing.
pub fn require_tool(bin: &str, how: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(bin))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| panic!("`{bin}` is not installed. Install it with: {how}"))
}

/// Polls `check` until it returns `Ok`, every `every`, and fails the test after `limit` with
/// `what` and the last `Err` it gave. The one wait of the harness: every condition a test
/// waits for goes through it, so none waits without a deadline.
pub async fn eventually_every<T, F, Fut>(
    limit: Duration,
    every: Duration,
    what: &str,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) => {
                if start.elapsed() >= limit {
                    panic!("timed out after {limit:?} waiting until {what}; last seen:\n{last}");
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// [`eventually_every`] polling every 50 ms.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    eventually_every(limit, Duration::from_millis(50), what, check).await
}

/// `Ok(())` when `cond` holds, else `Err(seen)`: the shape [`eventually`] takes.
pub fn holds(cond: bool, seen: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(seen()) }
}

/// The blocking twin of [`eventually`], for harness code that runs outside the runtime.
pub fn eventually_blocking<T>(
    limit: Duration,
    every: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) if start.elapsed() >= limit => {
                panic!("timed out after {limit:?} waiting until {what}; last seen:\n{last}")
            }
            Err(_) => std::thread::sleep(every),
        }
    }
}

/// Free loopback ports, never the same one twice in this process, and below the kernel's
/// ephemeral range: a port the OS hands out as :0 can be taken by any outgoing connection
/// between the test's pick and the server's bind (seen: a node failing with "Address already in
/// use" while other tests made connections).
pub fn free_ports(n: usize) -> Vec<u16> {
    static USED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut used = USED.lock().unwrap();
    let used = used.get_or_insert_with(HashSet::new);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let pid = std::process::id();
    let mut out = vec![];
    // Ports [10000, low); the cluster bus ports are picked here too (`cluster-port`).
    let span = low.saturating_sub(10000);
    let mut next = pid.wrapping_mul(7919) % span.max(1);
    for _ in 0..span {
        if out.len() == n {
            return out;
        }
        next = (next + 1) % span.max(1);
        let p = (10000 + next) as u16;
        if !used.contains(&p) && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            used.insert(p);
            out.push(p);
        }
    }
    // No room below the ephemeral range: let the kernel choose.
    while out.len() < n {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if used.insert(p) {
            out.push(p);
        }
    }
    out
}

/// Short timings so outages are detected in seconds.
pub fn fast_timings() -> Vec<(String, String)> {
    [
        ("PROBE_INTERVAL", "300ms"),
        ("PROBE_JITTER", "0.2"),
        ("PROBE_ATTEMPTS", "2"),
        ("PROBE_ATTEMPT_TIMEOUT", "500ms"),
        ("PROBE_RETRY_BACKOFF", "100ms"),
        ("PROBE_FAILURE_THRESHOLD", "3"),
        ("PROBE_OPEN_DURATION", "1s"),
        ("PROBE_OPEN_DURATION_MAX", "2s"),
        ("REDIS_DIAL_TIMEOUT", "500ms"),
        ("REDIS_READ_TIMEOUT", "500ms"),
        // Tests that count connections count the health loop's; the canary's own tests turn
        // it on.
        ("PROBE_IDLE_CANARY", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The default attempt and socket timeouts, for tests whose claim needs no attempt to time
/// out (connections made once, retries absorbing a transient fault): with the fast timings'
/// 500 ms, a debug build opening six TLS connections on a busy 2-core machine can time out,
/// which is a different fault.
pub fn patient_timeouts() -> Vec<(String, String)> {
    [
        ("PROBE_ATTEMPT_TIMEOUT", "2s"),
        ("REDIS_DIAL_TIMEOUT", "2s"),
        ("REDIS_READ_TIMEOUT", "2s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// `env` with `extra` appended (later pairs win in `config`).
pub fn with_vars<K: AsRef<str>, V: AsRef<str>>(
    mut env: Vec<(String, String)>,
    extra: &[(K, V)],
) -> Vec<(String, String)> {
    env.extend(
        extra
            .iter()
            .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string())),
    );
    env
}

/// The numeric command-line arguments of a measuring example, in order (others skipped).
pub fn numeric_args() -> Vec<u64> {
    std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// Builds a config from `env` pairs, later pairs winning.
pub fn config(env: &[(String, String)]) -> Config {
    let vars: EnvVars = env.iter().cloned().collect();
    Config::from_sources(&vars, None).unwrap_or_else(|e| panic!("test config invalid:\n{e}"))
}

pub fn die_with_parent(cmd: &mut Command) {
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Spawns `cmd` from one thread that lives as long as the test process. PR_SET_PDEATHSIG
/// fires when the *thread* that forked the child exits, and tokio's blocking threads exit when
/// idle: a server started from one would be killed in the middle of a test.
pub(crate) fn spawn_from_lasting_thread(cmd: Command) -> std::io::Result<Child> {
    type Job = (Command, std::sync::mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: std::sync::OnceLock<Mutex<std::sync::mpsc::Sender<Job>>> =
        std::sync::OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
        });
        Mutex::new(tx)
    });
    let (tx, rx) = std::sync::mpsc::channel();
    spawner
        .lock()
        .unwrap()
        .send((cmd, tx))
        .expect("spawner thread alive");
    rx.recv().expect("spawner thread alive")
}

pub(crate) fn run_with_timeout(mut cmd: Command, limit: Duration) -> std::process::Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().expect("running redis-cli");
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `cmd` with `input` on its standard input; its output.
pub fn run_with_input(mut cmd: Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}
