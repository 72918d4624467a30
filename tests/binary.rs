//! The `redis-probe` binary: `--check-config`, start-up errors, logs, SIGTERM.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Cluster, Options};

fn run(env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let out = support::binary_command(None, env.iter().copied())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn check_config_prints_effective_settings_without_secrets() {
    let (code, out, err) = run(
        &[
            ("REDIS_ADDRESS", "clustercfg.example:6379"),
            ("REDIS_PASSWORD", "hunter2-secret"),
            ("REDIS_POOL_SIZE", "1000"),
        ],
        &["--check-config"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("REDIS_ADDRESS=clustercfg.example:6379"),
        "{out}"
    );
    assert!(out.contains("REDIS_PASSWORD=<redacted>"), "{out}");
    assert!(out.contains("PROBE_INTERVAL=5s"), "{out}");
    assert!(!out.contains("hunter2") && !err.contains("hunter2"));
    // Every key is listed, unset ones too, so a user can see what exists.
    for key in redis_probe::config::KEYS {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("{}=", key.env))),
            "{} missing:\n{out}",
            key.env
        );
    }
    assert!(
        out.lines()
            .any(|l| l.starts_with("REDIS_USERNAME=") && l.ends_with("# redis.username, not set")),
        "{out}"
    );
}

#[test]
fn bad_configuration_exits_64_naming_variable_and_value() {
    let (code, _, err) = run(
        &[
            ("REDIS_ADDRESS", "a:1"),
            ("PROBE_EXPECTED_SHARDS", "abc"),
            ("PROBE_JITTER", "2"),
        ],
        &["--check-config"],
    );
    assert_eq!(code, 64);
    assert!(
        err.contains("PROBE_EXPECTED_SHARDS=abc: expected a shard count N or a range MIN..MAX"),
        "{err}"
    );
    assert!(
        err.contains("PROBE_JITTER=2: must be at least 0 and less than 1"),
        "{err}"
    );
    // Start-up (not only --check-config) refuses too.
    let (code, _, err) = run(&[("PROBE_LISTEN", "127.0.0.1:0")], &[]);
    assert_eq!(code, 64);
    assert!(err.contains("REDIS_ADDRESS is required"), "{err}");
    // Absurd values: exit 64 naming the variable and the value, never a panic.
    for (var, value) in [
        ("PROBE_ATTEMPTS", "1000000000"),
        ("PROBE_INTERVAL", "100000years"),
    ] {
        let (code, _, err) = run(&[("REDIS_ADDRESS", "a:1"), (var, value)], &[]);
        assert_eq!(code, 64, "{var}={value}: {err}");
        assert!(err.contains(&format!("{var}={value}")), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// A pod without IPv6 (a kernel booted with `ipv6.disable=1`: every IPv6 socket fails with
/// EAFNOSUPPORT, made here with a seccomp filter on the binary): the default `[::]:8081`
/// cannot be bound, so the sidecar listens on `0.0.0.0:8081` and says so, rather than not
/// starting.
#[tokio::test]
async fn an_ipv4_only_pod_falls_back_to_0_0_0_0() {
    let port = support::free_ports(1)[0];
    let mut cmd = support::binary_command(None, [("REDIS_ADDRESS", "127.0.0.1:1")]);
    // The default listen address, on a port of the test's own.
    cmd.env("PROBE_LISTEN", format!("[::]:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    support::die_with_parent(&mut cmd);
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(no_ipv6);
    }
    let mut child = cmd.spawn().unwrap();
    let v4: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    support::eventually(Duration::from_secs(20), "an answer on IPv4", || {
        if let Some(s) = child.try_wait().unwrap() {
            panic!("exited with {s:?}");
        }
        async move {
            match support::http_get_opt(v4, "/livez").await {
                Some((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let logs =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        logs.contains("no IPv6 in this pod: listening on IPv4 only"),
        "{logs}"
    );
}

/// A seccomp filter for the process about to exec: `socket(AF_INET6, ..)` fails with
/// EAFNOSUPPORT, as on a kernel without IPv6; everything else is allowed (x86_64 numbering).
fn no_ipv6() -> std::io::Result<()> {
    const NR_SOCKET: u32 = 41;
    const AF_INET6: u32 = 10;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    let stmt = |code: u16, k: u32| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let load = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    let mut filter = [
        stmt(load, 0),         // seccomp_data.nr
        jump(NR_SOCKET, 0, 3), // socket? else allow
        stmt(load, 16),        // args[0], low half: the family
        jump(AF_INET6, 0, 1),  // AF_INET6? else allow
        stmt(ret, RET_ERRNO | libc::EAFNOSUPPORT as u32),
        stmt(ret, RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[test]
fn exit_codes_tell_usage_from_configuration() {
    // Bad arguments: 2, with the usage text; the configuration is not even read.
    let (code, _, err) = run(&[], &["--no-such-flag"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--no-such-flag") && err.contains("usage:"),
        "{err}"
    );
    let (code, _, err) = run(&[], &["diagnose", "--duration=forever"]);
    assert_eq!(code, 2, "{err}");
    // Help per subcommand, exit 0, no configuration needed.
    let (code, out, _) = run(&[], &["diagnose", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--probe-timeout"), "{out}");
    let (code, out, _) = run(&[], &["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("64 bad configuration"), "{out}");
    // Bad configuration: 64, for diagnose too.
    let (code, _, err) = run(&[("REDIS_ADDRESS", "nowhere")], &["diagnose"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("REDIS_ADDRESS=nowhere: expected"), "{err}");
}

#[test]
fn config_file_from_flag() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("probe.toml");
    std::fs::write(
        &f,
        "[redis]\naddress = \"10.1.2.3:6379\"\n[probe]\nattempts = 7\n",
    )
    .unwrap();
    let (code, out, err) = run(&[], &["--config", f.to_str().unwrap(), "--check-config"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("PROBE_ATTEMPTS=7"), "{out}");
    assert!(out.contains("REDIS_ADDRESS=10.1.2.3:6379"), "{out}");
}

/// A wrong password, logs at debug level, then SIGTERM: the reason is logged once as `auth`,
/// the password is in no line, and the process exits 0 within 5 s.
#[test]
fn wrong_password_logs_then_sigterm_exits_cleanly() {
    let server = Cluster::start(Options::standalone());
    let port = support::free_ports(1)[0];
    let listen = format!("127.0.0.1:{port}");
    let wrong = "Wr0ng-Token-For-Logs";
    let mut env: Vec<(String, String)> = server.connection_env();
    env.push(("REDIS_PASSWORD".into(), wrong.into()));
    env.push(("PROBE_LISTEN".into(), listen.clone()));
    env.push(("PROBE_LOG_LEVEL".into(), "debug".into()));
    env.extend(support::fast_timings());
    // The default attempt and socket timeouts: a dial that times out on a loaded machine
    // would add a warning line of its own.
    env.extend(support::patient_timeouts());
    let mut child = support::binary_command(None, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut body = String::new();
    while !body.contains("[-]redis failed: auth") {
        assert!(Instant::now() < deadline, "never saw reason auth: {body}");
        std::thread::sleep(Duration::from_millis(100));
        if std::net::TcpStream::connect(addr).is_ok() {
            body = rt.block_on(support::http_get(addr, "/readyz?verbose")).1;
        }
    }
    // Let the breaker open and a few trial checks fail too.
    loop {
        let m = rt.block_on(support::http_get(addr, "/metrics")).1;
        let opened = support::sample(
            &m,
            "redis_circuit_breaker_transitions_total{from=\"closed\",to=\"open\"}",
        );
        let checks = support::sample(&m, "redis_health_checks_total").unwrap_or(0.0);
        if opened == Some(1.0) && checks >= 5.0 {
            break;
        }
        assert!(Instant::now() < deadline, "breaker never opened:\n{m}");
        std::thread::sleep(Duration::from_millis(100));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let stopped = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(20),
            "still running 20 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    println!("exit {:?} after SIGTERM", stopped.elapsed());
    let out = child.wait_with_output().unwrap();
    let logs =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!logs.contains(wrong), "password in logs:\n{logs}");
    assert!(!logs.contains(&server.password));
    let failed: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"msg\":\"Redis health check failed\""))
        .collect();
    assert_eq!(
        failed.len(),
        1,
        "one line per change of reason, not per failed check:\n{logs}"
    );
    assert!(
        failed[0].contains("\"reason\":\"auth\"") && failed[0].contains("\"level\":\"warn\""),
        "{}",
        failed[0]
    );
    assert!(failed[0].starts_with("{\"ts\":\""), "{}", failed[0]);
    // Warnings about what happened (the start-up line about the settings aside: the patient
    // attempt timeout is more than twice the fast interval).
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"level\":\"warn\"") && !l.contains("configuration warning"))
        .collect();
    assert_eq!(
        warnings.len(),
        2,
        "one warning for the reason, one for the breaker:\n{logs}"
    );
    assert!(warnings[1].contains("circuit breaker opened"), "{logs}");
    assert!(logs.contains("\"signal\":\"SIGTERM\""), "{logs}");
}

/// The exported text passes `promtool check metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool() {
    let promtool = support::require_tool(
        "promtool",
        "sudo apt-get install -y prometheus (or run scripts/install-deps)",
    );
    let cluster = Cluster::launch(Options::default()).await;
    let sidecar = support::Sidecar::start(support::config(&cluster.env())).await;
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(30))
        .await;
    let plain = sidecar.metrics().await;
    // promtool reads the Prometheus text format, which is what a client gets without asking
    // for OpenMetrics.
    let mut cmd = Command::new(&promtool);
    cmd.args(["check", "metrics"]);
    let out = support::run_with_input(cmd, plain.as_bytes());
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{plain}"
    );
    sidecar.stop().await;
}

/// The app's own settings, read as the Go app reads them, never keep the sidecar (and so a
/// native sidecar's app) from starting: `REDIS_READ_ONLY=t` is true, an unreadable one is a
/// warning line and `redis_probe_config_warning{kind="app_setting"}`.
#[tokio::test]
async fn the_apps_settings_never_stop_the_sidecar() {
    let (code, out, err) = run(
        &[
            ("REDIS_ADDRESS", "127.0.0.1:1"),
            ("REDIS_READ_ONLY", "t"),
            ("REDIS_POOL_SIZE", "lots"),
        ],
        &["--check-config"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("REDIS_READ_ONLY=t"), "{out}");
    assert!(
        out.contains("# warning: REDIS_POOL_SIZE=lots: expected an unsigned integer"),
        "{out}"
    );
    let closed = support::free_ports(1)[0];
    let env: Vec<(String, String)> = [
        ("REDIS_ADDRESS", format!("127.0.0.1:{closed}")),
        ("REDIS_MAX_CONN_AGE", "forever".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let sidecar = support::Sidecar::spawn(&env).await;
    let (status, _) = sidecar.get("/livez").await;
    assert_eq!(status, 200);
    let m = sidecar.metrics().await;
    assert_eq!(
        support::sample(&m, "redis_probe_config_warning{kind=\"app_setting\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        support::sample(&m, "redis_probe_config_warning{kind=\"unused_tls\"}"),
        Some(0.0),
        "{m}"
    );
    // The warning was written before the listener opened; its pipe may be read a little later.
    let deadline = Instant::now() + Duration::from_secs(10);
    let warned = |logs: &str| {
        logs.lines()
            .any(|l| l.contains("\"level\":\"warn\"") && l.contains("REDIS_MAX_CONN_AGE=forever"))
    };
    while !warned(&sidecar.logs()) {
        assert!(
            Instant::now() < deadline,
            "no warning line:\n{}",
            sidecar.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sidecar.stop().await;
}

/// The default listen address takes IPv4 and IPv6 (IPv6-only clusters probe the pod's IPv6
/// address), and SIGTERM, the real signal, stops it: exit 0, and the port closed.
#[tokio::test]
async fn listens_on_ipv4_and_ipv6_and_stops_on_sigterm() {
    let port = support::free_ports(1)[0];
    let closed = support::free_ports(1)[0];
    let mut cmd = support::binary_command(None, [("PATH", "/usr/bin")]);
    cmd.env("REDIS_ADDRESS", format!("127.0.0.1:{closed}"))
        .env("PROBE_LISTEN", format!("[::]:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    support::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let v4: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let v6: std::net::SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(v4).is_err() {
        assert!(Instant::now() < deadline, "never listened on {v4}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for addr in [v4, v6] {
        let (status, body) = support::http_get(addr, "/livez").await;
        assert_eq!((status, body.as_str()), (200, "ok\n"), "{addr}");
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "still running 20 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(std::net::TcpStream::connect(v4).is_err(), "still listening");
}

/// SIGTERM while a host-name lookup hangs (a DNS server that never answers, in a network and
/// mount namespace of the test's own): the process still exits within the kubelet's grace
/// period instead of waiting for the resolver.
#[tokio::test]
async fn sigterm_exits_while_dns_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    // Answered by nobody: the only route out is a tun device no process reads, which drops
    // everything.
    std::fs::write(
        &resolv,
        "nameserver 10.99.0.53\noptions timeout:30 attempts:3\n",
    )
    .unwrap();
    let script = format!(
        "set -e; mount --bind {resolv} /etc/resolv.conf; ip link set lo up; \
         ip tuntap add t0 mode tun; ip link set t0 up; ip addr add 10.99.0.1/24 dev t0; \
         exec {bin}",
        resolv = resolv.display(),
        bin = support::bin()
    );
    let mut cmd = Command::new(support::require_tool(
        "unshare",
        "sudo apt-get install -y util-linux",
    ));
    cmd.args(["--net", "--mount", "sh", "-c", &script])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("REDIS_ADDRESS", "redis.hangs.example:6379")
        .env("PROBE_JITTER", "0")
        .env("PROBE_LISTEN", "127.0.0.1:8081")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    support::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    // The lookup is in flight once the resolver has a UDP socket to the silent name server
    // (10.99.0.53:53, `3500630A:0035` in the namespace's /proc/net/udp).
    let udp = format!("/proc/{}/net/udp", child.id());
    support::eventually(
        Duration::from_secs(20),
        "the lookup is sent (is this root, with unshare and ip?)",
        || {
            if let Some(s) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
                panic!("exited early with {s:?}:\n{err}");
            }
            let table = std::fs::read_to_string(&udp).unwrap_or_default();
            std::future::ready(support::holds(table.contains(" 3500630A:0035 "), || table))
        },
    )
    .await;
    let sent = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    // The contract is the kubelet's grace period (30 s by default); the sidecar's own bound
    // is about a second, printed here.
    let status = support::eventually(
        Duration::from_secs(25),
        "the process exits after SIGTERM with a DNS lookup hanging",
        || std::future::ready(child.try_wait().unwrap().ok_or_else(String::new)),
    )
    .await;
    println!("exit {:?} after SIGTERM", sent.elapsed());
    assert!(status.success(), "{status:?}");
}
