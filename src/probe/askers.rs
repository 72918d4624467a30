//! Which node to ask for the topology, and when a reply that leaves a node out is believed.
//!
//! A node's `CLUSTER SHARDS` can leave out a node that the rest of the cluster lists: after a
//! rolling upgrade from Redis 7.0 (which sends no shard id) to Valkey 8.0, some primaries leave
//! out their own replica for as long as they run, and for a second or so after a failover
//! several Valkey nodes leave out the demoted primary. Taken at its word, every such reply is a
//! `node_left` and the next one a `node_joined`.
//!
//! So a `CLUSTER SHARDS` reply that drops a node is checked, only then: first with the same
//! node's `CLUSTER SLOTS` (which those nodes fill from each primary's replicas, and which still
//! lists the node), then, for what that leaves out (it omits failed replicas and shards without
//! slots), with another node's `CLUSTER SHARDS`. The nodes either lists are kept, where it
//! lists them, and the node that left them out is asked last from then on (for
//! [`TRUST_AGAIN_AFTER`]). A node that none lists has left.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::Topology;
use crate::config::HostPort;

/// How long a node whose topology was found partial is asked last.
pub const TRUST_AGAIN_AFTER: Duration = Duration::from_secs(600);

/// The nodes whose topology replies were found partial, and since when.
#[derive(Debug, Default)]
pub struct Askers {
    partial: HashMap<HostPort, Instant>,
}

impl Askers {
    /// `candidates` in their order, the nodes found partial (within [`TRUST_AGAIN_AFTER`])
    /// moved to the end: they are asked only when no other node answers.
    pub fn order(&mut self, mut candidates: Vec<HostPort>, now: Instant) -> Vec<HostPort> {
        self.partial
            .retain(|_, since| now.saturating_duration_since(*since) < TRUST_AGAIN_AFTER);
        candidates.sort_by_key(|c| self.partial.contains_key(c));
        candidates
    }

    /// Whether `addr` was found partial and is still asked last.
    pub fn is_partial(&self, addr: &HostPort) -> bool {
        self.partial.contains_key(addr)
    }

    /// `addr`'s reply left out a node another node lists.
    pub fn found_partial(&mut self, addr: &HostPort, now: Instant) {
        self.partial.insert(addr.clone(), now);
    }

    /// Forgets nodes that are no longer in `topology`.
    pub fn keep_only(&mut self, topology: &Topology) {
        self.partial
            .retain(|a, _| topology.nodes().any(|n| &n.addr == a));
    }
}

/// The nodes of `old` that `new` leaves out.
pub fn left_out(old: &Topology, new: &Topology) -> Vec<HostPort> {
    old.nodes()
        .map(|n| &n.addr)
        .filter(|a| !new.nodes().any(|n| &n.addr == *a))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::topology::{Node, Role, Shard};
    use super::*;

    fn hp(port: u16) -> HostPort {
        HostPort {
            host: "10.0.0.1".into(),
            port,
        }
    }

    fn topology(ports: &[u16]) -> Topology {
        Topology {
            shards: vec![Shard {
                slots: 16384,
                primary: Some(hp(ports[0])),
                nodes: ports
                    .iter()
                    .enumerate()
                    .map(|(i, p)| Node {
                        addr: hp(*p),
                        role: if i == 0 { Role::Primary } else { Role::Replica },
                    })
                    .collect(),
            }],
        }
    }

    #[test]
    fn the_nodes_a_reply_leaves_out() {
        let old = topology(&[1, 2, 3]);
        assert_eq!(left_out(&old, &topology(&[1, 2])), [hp(3)]);
        assert_eq!(left_out(&old, &topology(&[1, 3, 4])), [hp(2)]);
        assert!(left_out(&old, &old).is_empty());
    }

    /// A partial node goes to the end of the order, keeping the others' rotation, and comes
    /// back after TRUST_AGAIN_AFTER or when it leaves the topology.
    #[tokio::test(start_paused = true)]
    async fn partial_nodes_are_asked_last_for_a_while() {
        let mut askers = Askers::default();
        let start = Instant::now();
        askers.found_partial(&hp(2), start);
        assert_eq!(
            askers.order(vec![hp(2), hp(3), hp(1)], start),
            [hp(3), hp(1), hp(2)]
        );
        assert!(askers.is_partial(&hp(2)));
        let later = start + TRUST_AGAIN_AFTER;
        assert_eq!(
            askers.order(vec![hp(2), hp(3), hp(1)], later),
            [hp(2), hp(3), hp(1)]
        );
        assert!(!askers.is_partial(&hp(2)));
        askers.found_partial(&hp(2), later);
        askers.keep_only(&topology(&[1, 3]));
        assert!(!askers.is_partial(&hp(2)));
    }
}
