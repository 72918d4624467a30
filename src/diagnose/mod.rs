//! `redis-probe diagnose`: one run with the sidecar's configuration that connects, measures for
//! a few seconds and reports what an incident review would want, each finding with the number
//! behind it. Exit status: 0 when nothing is wrong, 1 when something is, 64 on bad
//! configuration.
//!
//! It reuses the probe (connections, topology, PING, INFO), the pool counter and the OTLP
//! checks, and prints instead of publishing. Each section has one function that gathers it
//! (`gather`) and one that prints it (`render`); findings are [`Code`]s, the same in the text
//! and the JSON report.

mod findings;
mod gather;
mod history;
mod render;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

pub use self::findings::{Code, Finding, Section};
pub use self::render::render_text;
use crate::config::Config;
use crate::probe::Role;
use crate::probe::tls::CertInfo;

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// Command-line options of `diagnose`.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub duration: Duration,
    pub format: Format,
    /// Pods of the Deployment, for the fleet's connection ceiling.
    pub replicas: Option<u32>,
    /// The kubelet's readinessProbe `timeoutSeconds`.
    pub probe_timeout: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            duration: Duration::from_secs(5),
            format: Format::Text,
            replicas: None,
            probe_timeout: None,
        }
    }
}

/// `ok` when nothing was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    #[default]
    Ok,
    Problems,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub verdict: Verdict,
    pub findings: Vec<Finding>,
    pub reachability: Reachability,
    pub topology: TopologyView,
    pub latency: Vec<NodeLatency>,
    pub connections: Connections,
    pub timeouts: Timeouts,
    pub otlp: OtlpView,
    pub sidecar: SidecarTiming,
    /// The running sidecar's events, oldest first (empty when none answers).
    pub events: Vec<history::EventLine>,
}

#[derive(Debug, Default, Serialize)]
pub struct Reachability {
    /// Configured address -> resolved IPs (or the error).
    pub dns: BTreeMap<String, Result<Vec<String>, String>>,
    pub nodes: Vec<NodeReach>,
}

/// Whether a node took the credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Auth {
    #[serde(rename = "ok")]
    Ok,
    #[serde(rename = "rejected")]
    Rejected,
    #[serde(rename = "not reached")]
    NotReached,
}

impl Auth {
    pub fn as_str(self) -> &'static str {
        match self {
            Auth::Ok => "ok",
            Auth::Rejected => "rejected",
            Auth::NotReached => "not reached",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct NodeReach {
    pub node: String,
    pub role: Role,
    /// `ok`, or the failure reason of the first check.
    pub check: String,
    pub auth: Auth,
    pub tls: Option<Result<CertInfo, String>>,
}

#[derive(Debug, Default, Serialize)]
pub struct TopologyView {
    pub shards: Vec<ShardView>,
    pub slots_covered: u32,
    pub cluster_state_ok: Option<bool>,
    pub live_shards: usize,
    pub expected_shards: Option<crate::config::ShardRange>,
    /// One shard behind one host name (ElastiCache Serverless): shard counts and the per-node
    /// ceiling are not computed.
    pub one_virtual_shard: bool,
}

#[derive(Debug, Serialize)]
pub struct ShardView {
    pub slots: u32,
    pub primary: Option<String>,
    pub replicas: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct NodeLatency {
    pub node: String,
    pub samples: usize,
    pub failures: usize,
    pub min_ms: f64,
    pub median_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Connections {
    pub nodes: Vec<NodeConnections>,
    /// The app's connections as the kernel sees them (netlink sock_diag), per node.
    pub app: Vec<AppConnections>,
    pub pool_size: Option<u32>,
    pub nodes_used_by_app: usize,
    pub pod_ceiling: Option<u64>,
    pub replicas: Option<u32>,
    /// `pool_size x replicas`: what the fleet may open to one node.
    pub fleet_ceiling_per_node: Option<u64>,
    pub lowest_maxclients: Option<u64>,
    /// One shard behind one host name (ElastiCache Serverless): no per-node ceiling.
    pub one_virtual_shard: bool,
}

/// The app's connections to one node: how many, the longest idle, round trip, retransmissions.
#[derive(Debug, Serialize)]
pub struct AppConnections {
    pub node: String,
    pub count: usize,
    pub idle_max_s: f64,
    pub rtt_ms: f64,
    pub retransmits: u64,
}

impl From<crate::pool::NodeTcp> for AppConnections {
    fn from(t: crate::pool::NodeTcp) -> Self {
        AppConnections {
            node: t.node,
            count: t.sockets.len(),
            idle_max_s: t.idle_max.as_secs_f64(),
            rtt_ms: t.rtt.as_secs_f64() * 1000.0,
            retransmits: t.sockets.iter().map(|(_, r)| u64::from(*r)).sum(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct NodeConnections {
    pub node: String,
    pub connected_clients: Option<u64>,
    pub maxclients: u64,
    /// This pod's established connections to the node (the sidecar's own excluded).
    pub this_pod: Option<u64>,
    /// The idle age at which the running sidecar's canary saw connections to the node cut.
    pub idle_cut_seconds: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Timeouts {
    pub dial_ms: u128,
    pub read_ms: u128,
    pub attempt_ms: u128,
    pub kubelet_probe_timeout_ms: Option<u128>,
    pub worst_p99_ms: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct OtlpView {
    pub endpoint: Option<String>,
    pub protocol: Option<&'static str>,
    pub lint: Vec<String>,
    pub reachable: Option<Result<(), String>>,
}

#[derive(Debug, Default, Serialize)]
pub struct SidecarTiming {
    /// Full outage with connections refused -> 503, worst case.
    pub outage_refused_to_unready_s: f64,
    /// Full outage where nodes time out -> 503, worst case.
    pub outage_timeout_to_unready_s: f64,
    /// Cluster healthy again -> 200, worst case (longest open duration + one check).
    pub recovery_to_ready_s: f64,
}

/// Runs the diagnosis.
pub async fn run(config: &Config, opts: &Options) -> Report {
    gather::report(config, opts).await
}
