//! What happened, in order: a bounded in-memory log of the events the sidecar saw (nodes
//! joining, leaving, changing role, restarting or changing version; its own connections lost and
//! why; breaker transitions; idle cuts learned), served as JSON lines on `/events`, counted per
//! kind (`redis_probe_events_total{kind}`), and read by the idle canary to tell a cut from a
//! server event. Written by the health loop and the canary; nothing secret goes in (node
//! addresses, closed-set labels and numbers only).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::time::Instant;

use crate::metrics::Metrics;

/// Events kept; the oldest go first. About 200 bytes each.
pub const CAPACITY: usize = 512;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    NodeJoined,
    NodeLeft,
    RoleChanged,
    /// A node failed two checks in a row.
    NodeDown,
    NodeBack,
    /// `run_id` changed, or `uptime_in_seconds` went back.
    NodeRestarted,
    /// The engine or version a node reports changed (a rolling upgrade).
    VersionChanged,
    /// The health loop's connection to a node failed an attempt (the reason in `detail`).
    ConnectionLost,
    BreakerOpened,
    BreakerClosed,
    /// The canary learned an idle cut (or one that no longer happens).
    IdleCut,
    IdleCutCleared,
    /// A connection of the sidecar's was lost and the cause decided (`detail`: which
    /// connection, `health` or `canary`, and the cause).
    Disconnect,
    /// A node's `rejected_connections` rose (maxclients reached; the count in `detail`).
    ClientsRejected,
    /// The pod's established connections reset rose (`EstabResets`, the app's sockets
    /// included; the count in `detail`).
    PodResets,
}

impl Kind {
    pub const ALL: [Kind; 15] = [
        Kind::NodeJoined,
        Kind::NodeLeft,
        Kind::RoleChanged,
        Kind::NodeDown,
        Kind::NodeBack,
        Kind::NodeRestarted,
        Kind::VersionChanged,
        Kind::ConnectionLost,
        Kind::BreakerOpened,
        Kind::BreakerClosed,
        Kind::IdleCut,
        Kind::IdleCutCleared,
        Kind::Disconnect,
        Kind::ClientsRejected,
        Kind::PodResets,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::NodeJoined => "node_joined",
            Kind::NodeLeft => "node_left",
            Kind::RoleChanged => "role_changed",
            Kind::NodeDown => "node_down",
            Kind::NodeBack => "node_back",
            Kind::NodeRestarted => "node_restarted",
            Kind::VersionChanged => "version_changed",
            Kind::ConnectionLost => "connection_lost",
            Kind::BreakerOpened => "breaker_opened",
            Kind::BreakerClosed => "breaker_closed",
            Kind::IdleCut => "idle_cut",
            Kind::IdleCutCleared => "idle_cut_cleared",
            Kind::Disconnect => "disconnect",
            Kind::ClientsRejected => "clients_rejected",
            Kind::PodResets => "pod_resets",
        }
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// When, on the wall clock (for people and `diagnose`).
    pub at: SystemTime,
    /// When, on the monotonic clock (for comparing with other events).
    pub mono: Instant,
    pub kind: Kind,
    /// The node's address, when the event is about one.
    pub node: Option<String>,
    /// A closed-set label or a number: a reason, a cause, `primary -> replica`, a version.
    pub detail: String,
}

impl Event {
    /// One JSON line: `{"ts":"…","kind":"…","node":"…","detail":"…"}`.
    pub fn json(&self) -> String {
        let mut v = serde_json::Map::new();
        let ts = humantime::format_rfc3339_millis(self.at).to_string();
        v.insert("ts".into(), ts.into());
        v.insert("kind".into(), self.kind.as_str().into());
        if let Some(n) = &self.node {
            v.insert("node".into(), n.clone().into());
        }
        if !self.detail.is_empty() {
            v.insert("detail".into(), self.detail.clone().into());
        }
        serde_json::Value::Object(v).to_string()
    }
}

/// The log; cheap to share.
#[derive(Clone)]
pub struct EventLog {
    events: Arc<Mutex<VecDeque<Event>>>,
    metrics: Arc<Metrics>,
}

impl EventLog {
    pub fn new(metrics: Arc<Metrics>) -> EventLog {
        for kind in Kind::ALL {
            metrics.declare_event(kind.as_str());
        }
        EventLog {
            events: Arc::new(Mutex::new(VecDeque::with_capacity(CAPACITY))),
            metrics,
        }
    }

    /// Records `kind` about `node` (or the whole cluster) now.
    pub fn push(&self, kind: Kind, node: Option<&str>, detail: impl Into<String>) {
        let e = Event {
            at: SystemTime::now(),
            mono: Instant::now(),
            kind,
            node: node.map(str::to_string),
            detail: detail.into(),
        };
        self.metrics.record_event(kind.as_str());
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if events.len() == CAPACITY {
            events.pop_front();
        }
        events.push_back(e);
    }

    /// The `conn` connection (`health`, `canary`) to `node` was lost for `cause`: an event and
    /// a count.
    pub fn disconnect(&self, conn: &'static str, node: &str, cause: &'static str) {
        self.metrics.record_disconnect(conn, cause);
        self.push(Kind::Disconnect, Some(node), format!("{conn} {cause}"));
    }

    /// Creates the disconnect series of `conn` at 0, one per cause.
    pub fn declare_disconnects(&self, conn: &'static str, causes: &[&'static str]) {
        for cause in causes {
            self.metrics.declare_disconnect(conn, cause);
        }
    }

    /// Every event kept, oldest first.
    pub fn all(&self) -> Vec<Event> {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events.iter().cloned().collect()
    }

    /// The events about `node` (or about the whole cluster) since `since`, oldest first.
    pub fn about_since(&self, node: &str, since: Instant) -> Vec<Event> {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events
            .iter()
            .filter(|e| e.mono >= since && e.node.as_deref().is_none_or(|n| n == node))
            .cloned()
            .collect()
    }

    /// The log as JSON lines, oldest first.
    pub fn json_lines(&self) -> String {
        let mut out = String::new();
        for e in self.all() {
            out.push_str(&e.json());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_oldest_first_and_filtered_by_node() {
        let log = EventLog::new(Arc::new(Metrics::new()));
        let start = Instant::now();
        for i in 0..CAPACITY + 10 {
            log.push(
                Kind::ConnectionLost,
                Some(&format!("n{}", i % 2)),
                "connection_reset",
            );
        }
        log.push(Kind::BreakerOpened, None, "");
        let all = log.all();
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all.last().unwrap().kind, Kind::BreakerOpened);
        // n0's events and the cluster's, none of n1's.
        let n0 = log.about_since("n0", start);
        assert!(n0.iter().all(|e| e.node.as_deref() != Some("n1")));
        assert_eq!(n0.len(), CAPACITY / 2);
        let line = &log.json_lines().lines().last().unwrap().to_string();
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["kind"], "breaker_opened");
        assert!(v.get("node").is_none());
    }
}
