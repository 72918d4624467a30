//! One vocabulary of faults and routine events, and a timeline of them for replays.
//!
//! A test or an example says what happens to the deployment (`Fault::PlannedFailover`,
//! `Fault::ClientKill(None)`, `Fault::BlackHole(..)`) instead of writing `redis-cli` strings or
//! calling into the proxies and the lab by hand; a [`Timeline`] plays several at set times.
//! Each fault asserts that it took effect (the server said OK, the process is gone), so a
//! replay that did nothing fails.

use std::time::Duration;

use super::Cluster;
use super::netns::Lab;

/// Something that happens to a deployment.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Node `i` stops at once (SIGKILL), as a crashed host.
    Kill(usize),
    /// Node `i` starts again with its configuration and cluster state, and answers PING.
    Start(usize),
    /// Node `i` is stopped (SIGTERM) and started again: a restart in place, as a replaced or
    /// upgraded node comes back.
    Restart(usize),
    /// Node `i` is stopped and started again on `engine`, with the same configuration and
    /// cluster state: one step of a rolling engine upgrade.
    RestartOn(usize, super::Engine),
    /// Every node stops at once: a full outage.
    KillAll,
    /// Every node starts again; waits until the cluster is healthy.
    RestartAll,
    /// `CLUSTER FAILOVER` on the replica of the first primary, from the admin connection.
    PlannedFailover,
    /// `CLIENT KILL TYPE normal` on node `i`, or on every running node.
    ClientKill(Option<usize>),
    /// Node `i` is frozen (SIGSTOP) or thawed (SIGCONT).
    Freeze(usize),
    Thaw(usize),
    /// Node `i` blocks in `DEBUG SLEEP` for this long (the call returns when it wakes).
    Sleep(usize, Duration),
    /// Every connection through the proxies is forgotten; each is reset when its client next
    /// sends. Needs a proxied deployment.
    ResetAll,
    /// As `ResetAll`, for node `i`'s proxy only.
    ResetNode(usize),
    /// The proxies reset every new connection (or accept again).
    Refuse(bool),
    /// A command the admin runs on node `i`, or on every running node; must not answer an
    /// error.
    Command(Option<usize>, Vec<String>),
    /// The lab drops every packet to this node's announced port: a black hole.
    BlackHole(usize),
    /// The lab loses this share (percent) of the packets each way.
    Loss(u32),
    /// The lab answers every packet of an established flow with a reset.
    ResetFlows,
    /// The lab's connection tracking forgets flows idle this many seconds, and resets them
    /// on their next packet.
    IdleCut(u32),
    /// The lab's fault rules are removed.
    ClearNet,
}

impl Fault {
    /// `args` on every running node.
    pub fn everywhere(args: &[&str]) -> Fault {
        Fault::Command(None, args.iter().map(|a| a.to_string()).collect())
    }

    /// `args` on node `i`.
    pub fn on(i: usize, args: &[&str]) -> Fault {
        Fault::Command(Some(i), args.iter().map(|a| a.to_string()).collect())
    }

    /// Makes it happen. Blocking (redis-cli, process waits): call from `spawn_blocking` or a
    /// plain thread. Lab faults need `lab`.
    pub fn apply(&self, c: &mut Cluster, lab: Option<&Lab>) {
        let lab = || lab.unwrap_or_else(|| panic!("{self:?} needs the network lab"));
        match self {
            Fault::Kill(i) => c.kill_node(*i),
            Fault::Start(i) => {
                c.start_node(*i);
                c.wait_pong(*i);
            }
            Fault::Restart(i) => {
                c.stop_node(*i);
                c.start_node(*i);
                c.wait_pong(*i);
            }
            Fault::RestartOn(i, engine) => {
                c.stop_node(*i);
                c.nodes[*i].server = Some(engine.binaries().0);
                c.start_node(*i);
                c.wait_pong(*i);
            }
            Fault::KillAll => c.kill_all(),
            Fault::RestartAll => c.restart_all(Duration::from_secs(60)),
            Fault::PlannedFailover => {
                c.fail_over();
            }
            Fault::ClientKill(at) => {
                for i in c.running(*at) {
                    let out = c.cli(i, &["CLIENT", "KILL", "TYPE", "normal"]);
                    // The reply is the number of clients killed; redis-cli's own connection
                    // is one of them when it is `normal`, so at least the sidecar's remain.
                    out.trim()
                        .parse::<u32>()
                        .unwrap_or_else(|_| panic!("CLIENT KILL on node {i}: {out}"));
                }
            }
            Fault::Freeze(i) => c.signal(*i, libc::SIGSTOP),
            Fault::Thaw(i) => c.signal(*i, libc::SIGCONT),
            Fault::Sleep(i, d) => {
                let secs = format!("{:.3}", d.as_secs_f64());
                let out = c.cli(*i, &["DEBUG", "SLEEP", &secs]);
                assert!(out.contains("OK"), "DEBUG SLEEP on node {i}: {out}");
            }
            Fault::ResetAll => {
                assert!(!c.proxies.is_empty(), "{self:?} needs `proxied: true`");
                c.proxies.iter().for_each(|p| p.reset_all());
            }
            Fault::ResetNode(i) => {
                assert!(!c.proxies.is_empty(), "{self:?} needs `proxied: true`");
                c.proxies[*i].reset_all();
            }
            Fault::Refuse(on) => {
                assert!(!c.proxies.is_empty(), "{self:?} needs `proxied: true`");
                c.proxies.iter().for_each(|p| p.set_refusing(*on));
            }
            Fault::Command(at, args) => {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                for i in c.running(*at) {
                    let out = c.cli(i, &args);
                    assert!(
                        !out.starts_with("ERR") && !out.starts_with("NOPERM"),
                        "node {i}: {args:?}: {out}"
                    );
                }
            }
            Fault::BlackHole(i) => lab().black_hole(c.nodes[*i].public_port),
            Fault::Loss(p) => lab().loss(*p),
            Fault::ResetFlows => lab().reset_flows(),
            Fault::IdleCut(s) => lab().idle_cut(*s),
            Fault::ClearNet => lab().clear(),
        }
    }
}

/// Faults at set times from the start of a replay.
#[derive(Clone, Debug, Default)]
pub struct Timeline(pub Vec<(Duration, Fault)>);

impl Timeline {
    pub fn new() -> Timeline {
        Timeline::default()
    }

    /// Adds `fault` at `at` from the start.
    pub fn at(mut self, at: Duration, fault: Fault) -> Timeline {
        self.0.push((at, fault));
        self
    }

    /// Plays every fault at its time (a late one runs at once), in time order, on a blocking
    /// thread; returns the cluster when the last one has happened. `on_each` hears each fault
    /// as it starts (a replay's narration).
    pub async fn play(
        mut self,
        mut cluster: Cluster,
        lab: Option<std::sync::Arc<Lab>>,
        on_each: impl Fn(Duration, &Fault) + Send + 'static,
    ) -> Cluster {
        self.0.sort_by_key(|(at, _)| *at);
        tokio::task::spawn_blocking(move || {
            let start = std::time::Instant::now();
            for (at, fault) in self.0 {
                if let Some(wait) = at.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
                on_each(start.elapsed(), &fault);
                fault.apply(&mut cluster, lab.as_deref());
            }
            cluster
        })
        .await
        .expect("a fault of the timeline failed")
    }
}
