//! What `diagnose` can find: a closed set of codes, each in one section, with stable names
//! used by both the text and the JSON report.

use serde::Serialize;

/// The report's sections, in the order they are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    Reachability,
    Topology,
    Latency,
    Connections,
    Timeouts,
    Otlp,
}

impl Section {
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Reachability => "reachability",
            Section::Topology => "topology",
            Section::Latency => "latency",
            Section::Connections => "connections",
            Section::Timeouts => "timeouts",
            Section::Otlp => "otlp",
        }
    }
}

/// One kind of problem. The names (`as_str`) are stable: scripts match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// A configured address does not resolve.
    Dns,
    /// `REDIS_PASSWORD_FILE` cannot be read.
    PasswordFile,
    /// The first check failed for a wrong password.
    Auth,
    /// The ACL user may not run PING (`NOPERM`).
    Permission,
    /// The address is not the kind of server the settings say: cluster support disabled
    /// under `REDIS_CLUSTER_MODE=true`, a replica or a Sentinel with it `false`.
    WrongServer,
    /// The first check failed in the TLS handshake.
    Tls,
    /// TLS is on with no CA file and the system trust store is empty.
    NoTrustStore,
    /// The first check failed otherwise.
    Unreachable,
    /// A node's certificate does not verify against the configured CA and name.
    TlsUnverified,
    /// A node's certificate expires in less than 14 days.
    CertExpiring,
    /// Not every slot is served.
    SlotsUncovered,
    /// CLUSTER INFO says `cluster_state:fail`.
    ClusterState,
    /// The shards serving slots are not the ones declared (`PROBE_EXPECTED_SHARDS`).
    ShardDrift,
    /// The nodes do not all run the same engine and version (a rolling upgrade in progress,
    /// or one that stopped half way).
    MixedVersions,
    /// The topology has more nodes than the sidecar follows (`PROBE_MAX_NODES`).
    TopologyTruncated,
    /// One node's PING is much slower than the others'.
    SlowNode,
    /// A node has more than 80 % of its maxclients connected.
    ClientsNearMax,
    /// The fleet's pools may open more connections to one node than its maxclients.
    CeilingAboveMaxclients,
    /// A node refuses new connections at maxclients: it said so, or it dropped this run's
    /// connection while the running sidecar saw its `rejected_connections` rise.
    MaxClients,
    /// The app keeps idle connections longer than the path lets them live.
    IdleAboveCut,
    /// The attempt timeout is longer than the kubelet's probe timeout.
    AttemptAboveProbeTimeout,
    /// The read timeout is less than 10x the worst healthy PING p99.
    ReadTimeoutTight,
    /// The OTEL exporter variables look wrong.
    OtlpSetting,
    /// The configured collector does not answer an empty export.
    OtlpUnreachable,
}

impl Code {
    pub fn section(self) -> Section {
        use Code::*;
        match self {
            Dns | PasswordFile | Auth | Permission | WrongServer | Tls | NoTrustStore
            | Unreachable | TlsUnverified | CertExpiring => Section::Reachability,
            SlotsUncovered | ClusterState | ShardDrift | TopologyTruncated | MixedVersions => {
                Section::Topology
            }
            SlowNode => Section::Latency,
            ClientsNearMax | CeilingAboveMaxclients | MaxClients | IdleAboveCut => {
                Section::Connections
            }
            AttemptAboveProbeTimeout | ReadTimeoutTight => Section::Timeouts,
            OtlpSetting | OtlpUnreachable => Section::Otlp,
        }
    }

    pub fn as_str(self) -> &'static str {
        use Code::*;
        match self {
            Dns => "dns",
            PasswordFile => "password_file",
            Auth => "auth",
            Permission => "permission",
            WrongServer => "wrong_server",
            Tls => "tls",
            NoTrustStore => "no_trust_store",
            Unreachable => "unreachable",
            TlsUnverified => "tls_unverified",
            CertExpiring => "cert_expiring",
            SlotsUncovered => "slots_uncovered",
            ClusterState => "cluster_state",
            ShardDrift => "shard_drift",
            TopologyTruncated => "topology_truncated",
            SlowNode => "slow_node",
            ClientsNearMax => "clients_near_max",
            CeilingAboveMaxclients => "ceiling_above_maxclients",
            MaxClients => "max_clients",
            IdleAboveCut => "idle_above_cut",
            MixedVersions => "mixed_versions",
            AttemptAboveProbeTimeout => "attempt_above_probe_timeout",
            ReadTimeoutTight => "read_timeout_tight",
            OtlpSetting => "otlp_setting",
            OtlpUnreachable => "otlp_unreachable",
        }
    }
}

/// One problem found, with the number behind it.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub section: Section,
    pub code: Code,
    pub message: String,
}

/// The findings of one run, in the order they were found.
#[derive(Debug, Default)]
pub struct Findings(pub Vec<Finding>);

impl Findings {
    pub fn add(&mut self, code: Code, message: impl Into<String>) {
        self.0.push(Finding {
            section: code.section(),
            code,
            message: message.into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_names_are_the_stable_names() {
        for code in [
            Code::Dns,
            Code::CeilingAboveMaxclients,
            Code::OtlpUnreachable,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let section = serde_json::to_string(&code.section()).unwrap();
            assert_eq!(section, format!("\"{}\"", code.section().as_str()));
        }
    }
}
