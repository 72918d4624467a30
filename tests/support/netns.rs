//! A network lab of namespaces the test makes and removes: a "pod" (the sidecar and the app
//! stand-in), a "mid" router between it and the Redis nodes (where faults are made with
//! nftables and connection tracking), and a "srv" namespace for the nodes.
//!
//! ```text
//!   pod 10.77.1.2 ──veth── 10.77.1.1 mid 10.77.2.1 ──veth── 10.77.2.2 srv (redis-server)
//! ```
//!
//! Everything stays inside these namespaces; dropping the [`Lab`] deletes them (and with them
//! the veths and every rule). Processes inside must be stopped first (declare the lab before
//! the cluster and the sidecar, so it drops last).

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

pub const POD_IP: &str = "10.77.1.2";
pub const SRV_IP: &str = "10.77.2.2";

pub struct Lab {
    pub pod: String,
    pub mid: String,
    pub srv: String,
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    pub fn new() -> Lab {
        super::require_tool("ip", "sudo apt-get install -y iproute2");
        super::require_tool(
            "nft",
            "sudo apt-get install -y nftables (or scripts/install-deps)",
        );
        remove_stale();
        static N: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let lab = Lab {
            pod: format!("rp{id}-pod"),
            mid: format!("rp{id}-mid"),
            srv: format!("rp{id}-srv"),
        };
        for ns in [&lab.pod, &lab.mid, &lab.srv] {
            run(&["ip", "netns", "add", ns]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        // Interface names are at most 15 bytes: short ones, unique per namespace.
        run(&[
            "ip", "-n", &lab.pod, "link", "add", "eth0", "type", "veth", "peer", "name", "tpod",
            "netns", &lab.mid,
        ]);
        run(&[
            "ip", "-n", &lab.srv, "link", "add", "eth0", "type", "veth", "peer", "name", "tsrv",
            "netns", &lab.mid,
        ]);
        run(&[
            "ip",
            "-n",
            &lab.pod,
            "addr",
            "add",
            &format!("{POD_IP}/24"),
            "dev",
            "eth0",
        ]);
        run(&[
            "ip",
            "-n",
            &lab.mid,
            "addr",
            "add",
            "10.77.1.1/24",
            "dev",
            "tpod",
        ]);
        run(&[
            "ip",
            "-n",
            &lab.mid,
            "addr",
            "add",
            "10.77.2.1/24",
            "dev",
            "tsrv",
        ]);
        run(&[
            "ip",
            "-n",
            &lab.srv,
            "addr",
            "add",
            &format!("{SRV_IP}/24"),
            "dev",
            "eth0",
        ]);
        for (ns, dev) in [
            (&lab.pod, "eth0"),
            (&lab.mid, "tpod"),
            (&lab.mid, "tsrv"),
            (&lab.srv, "eth0"),
        ] {
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        run(&[
            "ip",
            "-n",
            &lab.pod,
            "route",
            "add",
            "default",
            "via",
            "10.77.1.1",
        ]);
        run(&[
            "ip",
            "-n",
            &lab.srv,
            "route",
            "add",
            "default",
            "via",
            "10.77.2.1",
        ]);
        lab.exec_mid(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        // One table for every fault; its forward chain starts empty.
        lab.nft(
            "add table inet lab\nadd chain inet lab faults { type filter hook forward priority 0; }\n",
        );
        lab
    }

    fn exec_mid(&self, args: &[&str]) {
        let mut v = vec!["ip", "netns", "exec", self.mid.as_str()];
        v.extend(args);
        run(&v);
    }

    /// Applies an nftables script in the middle namespace.
    pub fn nft(&self, script: &str) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.mid, "nft", "-f", "-"]);
        let out = super::run_with_input(cmd, script.as_bytes());
        assert!(
            out.status.success(),
            "nft {script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Removes every fault rule.
    pub fn clear(&self) {
        self.nft("flush chain inet lab faults\n");
    }

    /// Packets to `port` on the nodes' side vanish: a black hole (timeouts, not refusals).
    pub fn black_hole(&self, port: u16) {
        self.nft(&format!(
            "add rule inet lab faults ip daddr {SRV_IP} tcp dport {port} drop\n"
        ));
    }

    /// A share of the packets each way is lost at random.
    pub fn loss(&self, percent: u32) {
        self.nft(&format!(
            "add rule inet lab faults numgen random mod 100 < {percent} drop\n"
        ));
    }

    /// Every packet of an established flow to the nodes is answered with a reset.
    pub fn reset_flows(&self) {
        self.nft(&format!(
            "add rule inet lab faults ip daddr {SRV_IP} ct state established reject with tcp reset\n"
        ));
    }

    /// Flows idle for longer than `secs` are forgotten by connection tracking, and their next
    /// packet is answered with a reset, as an idle-timeout middlebox does.
    pub fn idle_cut(&self, secs: u32) {
        self.nft("add rule inet lab faults ct state invalid reject with tcp reset\n");
        self.exec_mid(&[
            "sysctl",
            "-qw",
            &format!("net.netfilter.nf_conntrack_tcp_timeout_established={secs}"),
            "net.netfilter.nf_conntrack_tcp_loose=0",
        ]);
    }

    /// A command run inside namespace `ns`.
    pub fn command(&self, ns: &str, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.pod, &self.mid, &self.srv] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stdin(Stdio::null())
                .output();
        }
    }
}

/// Deletes the lab namespaces of test processes that died without dropping their lab (killed
/// by a signal): `rp<pid>-...` whose process is gone.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name
            .strip_prefix("rp")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// A TCP listener bound inside namespace `ns`.
pub fn bind_in(ns: &str, addr: &str) -> std::net::TcpListener {
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let f = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on this short-lived thread only; the fd is open for the call.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            std::net::TcpListener::bind(addr).unwrap()
        })
        .join()
        .unwrap()
    })
}

/// A TCP connection made from inside namespace `ns` (a socket keeps the namespace it was
/// created in), for a test in the host namespace to reach a server in the lab.
pub fn connect_in(ns: &str, addr: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let f = std::fs::File::open(&path)?;
            // SAFETY: setns on this short-lived thread only; the fd is open for the call.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))
        })
        .join()
        .unwrap()
    })
}
