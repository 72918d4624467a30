//! The sidecar under test (in this process or as the real binary) and an HTTP client for it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis_probe::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use super::{Cluster, die_with_parent, free_ports, netns, spawn_from_lasting_thread};

/// The sidecar's binary as a command with exactly `env` (nothing inherited), run inside
/// network namespace `ns` when given: the one way tests run it for a subcommand
/// (`diagnose`, `--check-config`) or a start that is expected to fail.
pub fn binary_command<K, V>(ns: Option<&str>, env: impl IntoIterator<Item = (K, V)>) -> Command
where
    K: AsRef<std::ffi::OsStr>,
    V: AsRef<std::ffi::OsStr>,
{
    let bin = super::bin();
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, &bin]);
            c
        }
        None => Command::new(&bin),
    };
    cmd.env_clear().envs(env).stdin(Stdio::null());
    cmd
}

/// Runs the binary with `env` and `args` to its end (60 s at most); its exit code and
/// everything it printed (stdout, then stderr).
pub fn run_binary(ns: Option<&str>, env: &[(String, String)], args: &[&str]) -> (i32, String) {
    let mut cmd = binary_command(ns, env.iter().cloned());
    cmd.args(args);
    let out = super::run_with_timeout(cmd, Duration::from_secs(60));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The sidecar running in this test process.
pub struct Sidecar {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// Set when the sidecar is the real binary in a child process.
    child: Option<Child>,
    /// The network namespace it runs in ([`netns::Lab`]'s pod), when not this one.
    netns: Option<String>,
    logs: std::sync::Arc<Mutex<String>>,
    /// Asks `/livez` every 250 ms from the start; [`Sidecar::stop`] fails the test when an
    /// answer was not 200, so every test that stops its sidecar holds "`/livez` stays 200".
    livez: LivezWatch,
}

struct LivezWatch {
    task: tokio::task::JoinHandle<()>,
    /// The first answer that was not 200: when, status and body.
    bad: std::sync::Arc<Mutex<Option<String>>>,
}

impl LivezWatch {
    fn start(addr: SocketAddr, netns: Option<String>) -> LivezWatch {
        let bad = std::sync::Arc::new(Mutex::new(None));
        let seen = bad.clone();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            loop {
                let (status, body) = match &netns {
                    None => http_get_opt(addr, "/livez")
                        .await
                        .unwrap_or((0, "connection refused".into())),
                    Some(ns) => get_in(ns, addr, "/livez").await,
                };
                if status != 200 {
                    let at = start.elapsed();
                    seen.lock()
                        .unwrap()
                        .get_or_insert(format!("{status} after {at:?}: {body}"));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        LivezWatch { task, bad }
    }
}

impl Sidecar {
    pub async fn start(config: Config) -> Sidecar {
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            redis_probe::run(&config, listener, async {
                let _ = rx.await;
            })
            .await
        });
        Sidecar {
            addr,
            shutdown: Some(tx),
            task: Some(task),
            child: None,
            netns: None,
            logs: Default::default(),
            livez: LivezWatch::start(addr, None),
        }
    }

    /// Runs the sidecar's binary with exactly `env` (plus a free `PROBE_LISTEN`), collecting
    /// what it logs.
    pub async fn spawn(env: &[(String, String)]) -> Sidecar {
        Self::spawn_in(None, &super::bin(), env, "PROBE_LISTEN").await
    }

    /// As [`Sidecar::spawn`], inside the lab's pod namespace `ns`, listening on the pod's
    /// address.
    pub async fn spawn_in_pod(ns: &str, env: &[(String, String)]) -> Sidecar {
        Self::spawn_in(Some(ns), &super::bin(), env, "PROBE_LISTEN").await
    }

    /// Runs the `redis-probe` binary at `bin` with exactly `env` (plus a free `PROBE_LISTEN`),
    /// collecting what it logs.
    pub async fn spawn_binary(bin: &str, env: &[(String, String)]) -> Sidecar {
        Self::spawn_program(bin, env, "PROBE_LISTEN").await
    }

    /// Runs the program at `bin` with exactly `env`, plus a free loopback address in the
    /// variable `listen_var`, collecting what it prints.
    pub async fn spawn_program(bin: &str, env: &[(String, String)], listen_var: &str) -> Sidecar {
        Self::spawn_in(None, bin, env, listen_var).await
    }

    /// Runs the sidecar's binary resolving host names with `hosts` ([`resolving`]).
    pub async fn spawn_resolving(env: &[(String, String)], hosts: &Path) -> Sidecar {
        let script = resolving(hosts);
        Self::spawn_program(script.to_str().unwrap(), env, "PROBE_LISTEN").await
    }

    /// As [`Sidecar::spawn_binary`], inside the lab's pod namespace `ns`, listening on the
    /// pod's address.
    pub async fn spawn_binary_in(ns: &str, bin: &str, env: &[(String, String)]) -> Sidecar {
        Self::spawn_in(Some(ns), bin, env, "PROBE_LISTEN").await
    }

    async fn spawn_in(
        ns: Option<&str>,
        bin: &str,
        env: &[(String, String)],
        listen_var: &str,
    ) -> Sidecar {
        let port = free_ports(1)[0];
        let ip = if ns.is_some() {
            netns::POD_IP
        } else {
            "127.0.0.1"
        };
        let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, bin]);
                c
            }
            None => Command::new(bin),
        };
        cmd.env_clear()
            .envs(env.iter().filter(|(k, _)| k != listen_var).cloned())
            // In the lab, every address of the pod (its loopback too, as in a real pod).
            .env(
                listen_var,
                match ns {
                    Some(_) => format!("0.0.0.0:{port}"),
                    None => addr.to_string(),
                },
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = spawn_from_lasting_thread(cmd).expect("starting redis-probe");
        let logs = std::sync::Arc::new(Mutex::new(String::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut l = logs.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let reach = |addr| match ns {
            Some(ns) => netns::connect_in(ns, addr),
            None => std::net::TcpStream::connect(addr),
        };
        while reach(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "{bin} did not listen:\n{}",
                logs.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Sidecar {
            addr,
            shutdown: None,
            task: None,
            child: Some(child),
            netns: ns.map(str::to_string),
            logs,
            livez: LivezWatch::start(addr, ns.map(str::to_string)),
        }
    }

    /// The binary's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the binary has logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        match &self.netns {
            None => http_get(self.addr, path).await,
            Some(ns) => get_in(ns, self.addr, path).await,
        }
    }

    /// Waits until `GET path` answers `status`, at most `limit`; returns how long it took and
    /// the body.
    pub async fn wait_status(
        &self,
        path: &str,
        status: u16,
        limit: Duration,
    ) -> (Duration, String) {
        self.wait_body(path, status, "", limit).await
    }

    /// Waits until `GET path` answers `status` with a body containing `contains`, at most
    /// `limit`; returns how long it took and the body.
    pub async fn wait_body(
        &self,
        path: &str,
        status: u16,
        contains: &str,
        limit: Duration,
    ) -> (Duration, String) {
        let start = Instant::now();
        let what = format!("GET {path} answers {status} with {contains:?}");
        let body = super::eventually(limit, &what, || async {
            let (s, body) = self.get(path).await;
            if s == status && body.contains(contains) {
                Ok(body)
            } else {
                Err(format!("{s}\n{body}"))
            }
        })
        .await;
        (start.elapsed(), body)
    }

    /// Waits until the sample `series` exists and satisfies `want`; returns its value.
    pub async fn wait_metric(
        &self,
        series: &str,
        want: impl Fn(f64) -> bool,
        limit: Duration,
    ) -> f64 {
        super::eventually(limit, &format!("{series} as expected"), || async {
            let m = self.metrics().await;
            match sample(&m, series) {
                Some(v) if want(v) => Ok(v),
                _ => Err(m),
            }
        })
        .await
    }

    /// Waits until the binary has logged a line containing `text`.
    pub async fn wait_log(&self, text: &str, limit: Duration) {
        super::eventually(limit, &format!("a log line with {text:?}"), || {
            std::future::ready(super::holds(self.logs().contains(text), || self.logs()))
        })
        .await
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.1
    }

    /// Fails the test if `/livez` ever answered anything but 200, then stops the sidecar
    /// (SIGTERM for the binary, which must exit 0).
    pub async fn stop(mut self) {
        let watcher_ended = self.livez.task.is_finished();
        self.livez.task.abort();
        assert!(
            !watcher_ended,
            "the /livez watcher failed (a request panicked)"
        );
        if let Some(bad) = self.livez.bad.lock().unwrap().take() {
            panic!("/livez answered {bad}\n{}", self.logs());
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let status = tokio::task::spawn_blocking(move || child.wait())
                .await
                .unwrap()
                .unwrap();
            assert!(
                status.success(),
                "redis-probe exited with {status:?}:\n{}",
                self.logs()
            );
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.livez.task.abort();
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A script that runs the sidecar's binary with its arguments, resolving host names with
/// `hosts`: the file is bind-mounted over /etc/hosts in a mount namespace of the binary's own,
/// and glibc reads it at every lookup, so a test moves a name by rewriting the file in place.
pub fn resolving(hosts: &Path) -> PathBuf {
    let script = hosts.with_file_name("redis-probe-resolving.sh");
    let text = format!(
        "#!/bin/sh\nexec /usr/bin/unshare --mount --propagation private /bin/sh -c \
         '/usr/bin/mount --bind \"$0\" /etc/hosts && exec \"$@\"' '{}' '{}' \"$@\"\n",
        hosts.display(),
        super::bin()
    );
    std::fs::write(&script, text).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// A one-shot HTTP/1.1 GET; returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let raw = http_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    parse_response(&raw)
}

/// As [`http_get`], to a server inside network namespace `ns`.
pub async fn get_in(ns: &str, addr: SocketAddr, path: &str) -> (u16, String) {
    let std = netns::connect_in(ns, addr).expect("reaching the server in the lab");
    std.set_nonblocking(true).unwrap();
    let mut s = tokio::net::TcpStream::from_std(std).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![];
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    parse_response(&String::from_utf8_lossy(&buf))
}

/// As [`http_get`], `None` when nothing accepts the connection.
pub async fn http_get_opt(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = vec![];
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    Some(parse_response(&String::from_utf8_lossy(&buf)))
}

/// Sends `request` as is and returns everything the server wrote back.
pub async fn http_raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = vec![];
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

pub fn parse_response(raw: &str) -> (u16, String) {
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Every counter sample (`*_total` series) in a metrics text, by series.
pub fn counters(metrics: &str) -> std::collections::BTreeMap<String, f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            name.ends_with("_total")
                .then(|| Some((series.to_string(), value.parse().ok()?)))?
        })
        .collect()
}

/// Fails when a counter of `before` is lower, or gone, in `after`.
pub fn assert_counters_never_go_back(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) {
    for (series, was) in before {
        let now = after.get(series).copied();
        assert!(
            now.is_some_and(|now| now >= *was),
            "{series} went from {was} to {now:?}"
        );
    }
}

/// The value of a sample line `name{labels} value` in a metrics text.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

/// Watches `/readyz` (must stay 200) and `/livez` (must stay 200) until `done` holds; returns the
/// slowest `/readyz` answer seen.
pub async fn ready_until(
    sidecar: &Sidecar,
    limit: Duration,
    done: impl Fn(&str) -> bool,
) -> Duration {
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    loop {
        let t = Instant::now();
        let (status, body) = sidecar.get("/readyz?verbose").await;
        slowest = slowest.max(t.elapsed());
        assert_eq!(
            status,
            200,
            "readiness flipped after {:?}:\n{body}",
            start.elapsed()
        );
        assert_eq!(sidecar.get("/livez").await.0, 200);
        if done(&sidecar.metrics().await) {
            return slowest;
        }
        assert!(
            start.elapsed() < limit,
            "condition not met in {limit:?}:\n{body}\n{}",
            sidecar.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A planned failover, followed by `sidecar` without a flip of readiness (20 s at most);
/// returns (old primary, new primary).
pub async fn planned_failover_followed(cluster: &Cluster, sidecar: &Sidecar) -> (usize, usize) {
    let (old, new) = cluster.fail_over();
    ready_until(
        sidecar,
        Duration::from_secs(20),
        roles_swapped(cluster, old, new),
    )
    .await;
    (old, new)
}

/// The metrics show `new` as primary and `old` as replica.
pub fn roles_swapped(cluster: &Cluster, old: usize, new: usize) -> impl Fn(&str) -> bool + '_ {
    move |m| {
        sample(m, &role_series(cluster, new, "primary")) == Some(1.0)
            && sample(m, &role_series(cluster, old, "replica")) == Some(1.0)
    }
}

/// Waits until `/readyz?verbose` names `reason` (503), at most `limit`; returns the body.
pub async fn wait_reason(sidecar: &Sidecar, reason: &str, limit: Duration) -> String {
    let what = format!("/readyz names the reason {reason}");
    super::eventually_every(limit, Duration::from_millis(100), &what, || async {
        let (status, body) = sidecar.get("/readyz?verbose").await;
        let named = |end: &str| body.contains(&format!("[-]redis failed: {reason}{end}"));
        if named("\n") || named(" (") {
            assert_eq!(status, 503, "{body}");
            Ok(body)
        } else {
            Err(format!("{body}\n{}", sidecar.logs()))
        }
    })
    .await
}

pub fn role_series(cluster: &Cluster, i: usize, role: &str) -> String {
    format!(
        "redis_node_info{{node=\"{}\",role=\"{role}\"}}",
        cluster.nodes[i].addr()
    )
}
