//! What a check and an INFO read report, and the verdict of a check from its node reports.

use std::time::Duration;

use super::info;
use super::reason::Reason;
use super::topology::{self, Role, Topology};
use crate::config::HostPort;

/// What one node did in one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeReport {
    pub addr: HostPort,
    pub role: Role,
    /// PING round trip, or why it failed.
    pub result: Result<Duration, Reason>,
}

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    pub result: Result<(), Reason>,
    pub nodes: Vec<NodeReport>,
    /// One line of detail for logs when the check failed: never the password, never a label.
    pub detail: Option<String>,
    /// What the attempt cost Redis.
    pub cost: Cost,
}

/// Work an attempt caused on the Redis side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cost {
    /// Connections the probe tried to open (each a TCP connect, TLS handshake and AUTH when the
    /// node is up).
    pub dials: u32,
    /// Commands sent over open connections (PING, CLUSTER SHARDS, CLUSTER INFO).
    pub commands: u32,
    /// Connections held open after the attempt.
    pub held: u32,
}

impl CheckReport {
    pub fn passed() -> Self {
        CheckReport {
            result: Ok(()),
            nodes: vec![],
            detail: None,
            cost: Cost::default(),
        }
    }

    pub fn failed(reason: Reason, detail: impl Into<String>) -> Self {
        CheckReport {
            result: Err(reason),
            nodes: vec![],
            detail: Some(detail.into()),
            cost: Cost::default(),
        }
    }
}

/// What one node's `INFO` said.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub addr: HostPort,
    pub role: Role,
    pub info: info::NodeInfo,
}

/// The server-side view of the cluster, read on a slower cadence than PING.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InfoReport {
    /// Nodes that answered `INFO`.
    pub nodes: Vec<NodeView>,
    /// `CLUSTER INFO` as read with the last check's topology (cluster mode only).
    pub cluster: Option<info::ClusterInfo>,
    /// Shards in the topology (with slots), as this probe sees them.
    pub shards: usize,
    /// Lines of INFO-style replies that did not parse.
    pub parse_errors: u32,
    /// Nodes whose INFO failed, and why.
    pub failures: Vec<(HostPort, Reason)>,
    pub cost: Cost,
}

/// Pass when every shard with slots has a primary that answered. The reason for a failure,
/// most telling first:
/// - every node failed for the same reason: that reason (a full outage, a wrong password, a
///   wrong CA);
/// - some shard has no node answering at all, or names no primary: `no_primary`;
/// - otherwise a primary failed while its replicas answer (frozen, restarting, failing over):
///   that primary's own reason (`timeout`, `connection_refused`, `connection_reset`, ...).
pub(super) fn verdict(
    topology: &Topology,
    nodes: &[NodeReport],
    topo_failure: Option<Reason>,
) -> Result<(), Reason> {
    let result = |addr: &HostPort| nodes.iter().find(|n| &n.addr == addr).map(|n| n.result);
    let failing: Vec<&topology::Shard> = topology
        .shards
        .iter()
        .filter(|s| s.slots > 0 || topology.shards.len() == 1)
        .filter(|s| {
            s.primary
                .as_ref()
                .and_then(result)
                .is_none_or(|r| r.is_err())
        })
        .collect();
    if failing.is_empty() {
        return match topo_failure {
            Some(r @ Reason::ClusterDown) => Err(r),
            _ => Ok(()),
        };
    }
    let failed: Vec<Reason> = nodes.iter().filter_map(|n| n.result.err()).collect();
    if let Some(first) = failed.first()
        && failed.len() == nodes.len()
        && failed.iter().all(|r| r == first)
    {
        return Err(*first);
    }
    let whole_shard_down = failing.iter().any(|s| {
        s.primary.is_none()
            || s.nodes
                .iter()
                .all(|n| result(&n.addr).is_none_or(|r| r.is_err()))
    });
    if whole_shard_down {
        return Err(Reason::NoPrimary);
    }
    let primary_reason = failing[0]
        .primary
        .as_ref()
        .and_then(result)
        .and_then(Result::err);
    Err(primary_reason.unwrap_or(Reason::NoPrimary))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(p: u16) -> HostPort {
        HostPort {
            host: "127.0.0.1".into(),
            port: p,
        }
    }

    fn topo() -> Topology {
        use topology::{Node, Shard};
        let shard = |p: u16, r: u16| Shard {
            slots: 100,
            primary: Some(hp(p)),
            nodes: vec![
                Node {
                    addr: hp(p),
                    role: Role::Primary,
                },
                Node {
                    addr: hp(r),
                    role: Role::Replica,
                },
            ],
        };
        Topology {
            shards: vec![shard(1, 4), shard(2, 5), shard(3, 6)],
        }
    }

    fn reports(results: &[(u16, Result<(), Reason>)]) -> Vec<NodeReport> {
        results
            .iter()
            .map(|(p, r)| NodeReport {
                addr: hp(*p),
                role: if *p <= 3 {
                    Role::Primary
                } else {
                    Role::Replica
                },
                result: r.map(|_| Duration::from_millis(1)),
            })
            .collect()
    }

    #[test]
    fn replica_failure_does_not_fail_the_check() {
        let n = reports(&[
            (1, Ok(())),
            (2, Ok(())),
            (3, Ok(())),
            (4, Err(Reason::Timeout)),
            (5, Ok(())),
            (6, Ok(())),
        ]);
        assert_eq!(verdict(&topo(), &n, None), Ok(()));
    }

    #[test]
    fn one_shard_down_is_no_primary() {
        let n = reports(&[
            (1, Ok(())),
            (2, Ok(())),
            (3, Err(Reason::ConnectionRefused)),
            (4, Ok(())),
            (5, Ok(())),
            (6, Err(Reason::ConnectionRefused)),
        ]);
        assert_eq!(verdict(&topo(), &n, None), Err(Reason::NoPrimary));
    }

    #[test]
    fn a_primary_failing_alone_reports_its_own_reason() {
        let n = reports(&[
            (1, Ok(())),
            (2, Err(Reason::Timeout)),
            (3, Ok(())),
            (4, Ok(())),
            (5, Ok(())),
            (6, Ok(())),
        ]);
        assert_eq!(verdict(&topo(), &n, None), Err(Reason::Timeout));
    }

    #[test]
    fn everything_down_for_one_reason_reports_it() {
        let all: Vec<_> = (1..=6).map(|p| (p, Err(Reason::Auth))).collect();
        assert_eq!(verdict(&topo(), &reports(&all), None), Err(Reason::Auth));
    }

    #[test]
    fn cluster_state_fail_with_all_primaries_up() {
        let all: Vec<_> = (1..=6).map(|p| (p, Ok(()))).collect();
        assert_eq!(
            verdict(&topo(), &reports(&all), Some(Reason::ClusterDown)),
            Err(Reason::ClusterDown)
        );
    }
}
