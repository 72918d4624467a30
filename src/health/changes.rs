//! What changed from one check (or INFO read) to the next: one log line per change, never per
//! repetition, and the same changes as events ([`crate::events`]): nodes joining, leaving,
//! changing role, going down and coming back; the loop's own connections lost; nodes that
//! restarted or changed version (from INFO). Kept apart from the loop's scheduling.

use std::collections::HashMap;

use tokio::time::Instant;

use crate::breaker::{State, Transition};
use crate::disconnect;
use crate::events::{EventLog, Kind};
use crate::probe::info::Identity;
use crate::probe::{CheckReport, InfoReport, Reason};

/// How long a lost connection of the loop's may wait for an event to explain it.
pub const EXPLAIN_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

/// What was last seen, to tell changes from repetitions.
#[derive(Default)]
pub struct Changes {
    /// The last check's failure reason and per-node results.
    last_logged: Option<Reason>,
    last_nodes: Vec<NodeLog>,
    /// Nodes whose connection worked in the last attempt that reached them.
    node_ok: HashMap<String, bool>,
    /// Each node's identity at the last INFO read, and when it was read.
    identities: HashMap<String, (Identity, Instant)>,
    /// Restarts seen per node, kept while a node is out of a view for a while.
    restarts: HashMap<String, u64>,
    /// `rejected_connections` per node at the last INFO read.
    rejected: HashMap<String, u64>,
    /// The loop's own connections lost and not yet explained, and when.
    lost: HashMap<String, Instant>,
    events: Option<EventLog>,
}

impl Changes {
    pub fn new(events: Option<EventLog>) -> Changes {
        if let Some(e) = &events {
            let causes: Vec<&'static str> =
                disconnect::Cause::ALL.iter().map(|c| c.as_str()).collect();
            e.declare_disconnects("health", &causes);
        }
        Changes {
            events,
            ..Changes::default()
        }
    }

    /// Puts down each lost connection of the loop's to what followed it (a restart, a role
    /// change, the node leaving, the canary's connection lost too); one not explained within
    /// [`EXPLAIN_WITHIN`] is `all_clients_dropped` when its node went down, else `unknown` (the
    /// path, or the server closing it).
    fn explain_losses(&mut self) {
        let Some(e) = &self.events else {
            self.lost.clear();
            return;
        };
        let now = Instant::now();
        self.lost.retain(|node, at| {
            let since = e.about_since(node, *at);
            let kinds: Vec<Kind> = since.iter().map(|ev| ev.kind).collect();
            let canary_lost_too = since
                .iter()
                .any(|ev| ev.kind == Kind::Disconnect && ev.detail.starts_with("canary "));
            let waited = now - *at >= EXPLAIN_WITHIN;
            let Some(cause) = disconnect::health_cause(&kinds, canary_lost_too, waited) else {
                return true;
            };
            e.disconnect("health", node, cause.as_str());
            false
        });
    }

    fn event(&self, kind: Kind, node: &str, detail: impl Into<String>) {
        if let Some(e) = &self.events {
            e.push(kind, Some(node), detail);
        }
    }

    /// One attempt's per-node results: a connection that worked and then failed is an event.
    pub fn on_attempt(&mut self, report: &CheckReport) {
        for n in &report.nodes {
            let addr = n.addr.to_string();
            let was_ok = self.node_ok.insert(addr.clone(), n.result.is_ok());
            if let (Err(r), Some(true)) = (n.result, was_ok) {
                self.event(Kind::ConnectionLost, &addr, r.as_str());
                self.lost.entry(addr).or_insert_with(Instant::now);
            }
        }
    }

    /// A breaker transition: going down and coming back are events.
    pub fn on_transition(&self, t: Transition, reason: Option<Reason>) {
        let Some(e) = &self.events else {
            return;
        };
        match (t.from, t.to) {
            (State::Closed, State::Open) => {
                e.push(Kind::BreakerOpened, None, reason.map_or("", Reason::as_str))
            }
            (_, State::Closed) => e.push(Kind::BreakerClosed, None, ""),
            _ => {}
        }
    }

    /// An INFO read: nodes that restarted or changed engine or version since the last one.
    /// Returns the restarts seen so far per node.
    pub fn on_info(&mut self, report: &InfoReport) -> &HashMap<String, u64> {
        let now = Instant::now();
        for n in &report.nodes {
            let addr = n.addr.to_string();
            let id = n.info.identity.clone();
            if let Some((before, at)) = self.identities.get(&addr) {
                if disconnect::restarted(before, &id, now - *at) {
                    tracing::info!(node = %addr, "node restarted");
                    self.event(Kind::NodeRestarted, &addr, "");
                    *self.restarts.entry(addr.clone()).or_default() += 1;
                }
                if (before.engine, &before.version) != (id.engine, &id.version)
                    && id.version.is_some()
                {
                    let to = format!(
                        "{} {}",
                        id.engine.unwrap_or(""),
                        id.version.as_deref().unwrap_or("")
                    );
                    tracing::info!(node = %addr, to = %to, "node changed version");
                    self.event(Kind::VersionChanged, &addr, to);
                }
            }
            if let Some(r) = n.info.rejected_connections {
                let before = self.rejected.insert(addr.clone(), r);
                if let Some(b) = before
                    && r > b
                {
                    tracing::warn!(node = %addr, rejected = r - b, "the node rejected connections (maxclients)");
                    self.event(Kind::ClientsRejected, &addr, format!("+{}", r - b));
                }
            }
            self.identities.insert(addr, (id, now));
        }
        self.explain_losses();
        // Kept across a node's absence from a view (a node that is out of the topology for a
        // while and back is still compared); bounded by the nodes ever followed.
        if self.identities.len() > 40_000 {
            self.identities.clear();
            self.restarts.clear();
        }
        &self.restarts
    }

    /// One line when the check's failure reason changes; one when a node joins, leaves, changes
    /// role, stays down for two checks, or answers again after that.
    pub fn on_check(&mut self, report: &CheckReport, consecutive_failures: u32) {
        self.log_check(report, consecutive_failures);
        self.explain_losses();
    }

    fn log_check(&mut self, report: &CheckReport, consecutive_failures: u32) {
        let reason = report.result.err();
        if reason != self.last_logged {
            let failing_node = report
                .nodes
                .iter()
                .find(|n| n.result.is_err())
                .map(|n| n.addr.to_string());
            match reason {
                Some(r) => tracing::warn!(
                    reason = r.as_str(),
                    node = failing_node.as_deref().unwrap_or(""),
                    consecutive_failures,
                    detail = report.detail.as_deref().unwrap_or(""),
                    "Redis health check failed"
                ),
                None => tracing::info!("Redis health check passed"),
            }
            self.last_logged = reason;
        }
        if report.nodes.is_empty() {
            return;
        }
        let first = self.last_nodes.is_empty();
        // When every node fails, the check's own line says it all.
        let all_failed = report.nodes.iter().all(|n| n.result.is_err());
        let mut nodes = Vec::with_capacity(report.nodes.len());
        for n in &report.nodes {
            let addr = n.addr.to_string();
            let role = n.role.as_str();
            let before = self.last_nodes.iter().find(|b| b.addr == addr);
            let mut log = before.cloned().unwrap_or(NodeLog {
                addr: addr.clone(),
                role,
                failed_checks: 0,
                down_logged: false,
            });
            match before {
                None if !first => {
                    tracing::info!(node = %addr, role, "node joined the topology");
                    self.event(Kind::NodeJoined, &addr, role);
                }
                Some(b) if b.role != role => {
                    tracing::info!(node = %addr, from = b.role, to = role, "node changed role");
                    self.event(Kind::RoleChanged, &addr, format!("{} -> {role}", b.role));
                }
                _ => {}
            }
            log.role = role;
            match n.result {
                // One failed check is often a connection the network dropped; a node that fails
                // two checks in a row is down.
                Err(r) => {
                    log.failed_checks += 1;
                    if log.failed_checks >= 2 && !log.down_logged && !all_failed {
                        tracing::warn!(node = %addr, role, reason = r.as_str(), "node not answering");
                        self.event(Kind::NodeDown, &addr, r.as_str());
                        log.down_logged = true;
                    }
                }
                Ok(_) => {
                    if log.down_logged {
                        tracing::info!(node = %addr, role, "node answering again");
                        self.event(Kind::NodeBack, &addr, role);
                    }
                    log.failed_checks = 0;
                    log.down_logged = false;
                }
            }
            nodes.push(log);
        }
        for b in &self.last_nodes {
            if !nodes.iter().any(|n| n.addr == b.addr) {
                tracing::info!(node = %b.addr, role = b.role, "node left the topology");
                self.event(Kind::NodeLeft, &b.addr, b.role);
            }
        }
        self.last_nodes = nodes;
    }
}

/// What was last logged about one node.
#[derive(Debug, Clone)]
struct NodeLog {
    addr: String,
    role: &'static str,
    failed_checks: u32,
    down_logged: bool,
}
