//! How a check finds the topology: `CLUSTER SHARDS` (or `CLUSTER SLOTS` where it is refused or
//! missing) with `CLUSTER INFO` from the first node that answers, and `INFO replication` with
//! cluster mode disabled.

use std::sync::atomic::Ordering;

use redis::{RedisError, Value};
use tokio::time::{Instant, timeout_at};

use super::{Fault, Reason, RedisProbe, Topology, askers, info, topology, view};
use crate::config::HostPort;

impl RedisProbe {
    /// Reads the topology from the first of `candidates` that answers, the nodes found partial
    /// last. A reply that leaves out a node is checked with the same node's `CLUSTER SLOTS`,
    /// then with another node of `answered` (those that answered their PING this attempt)
    /// ([`askers`]).
    pub(super) async fn read_topology(
        &mut self,
        candidates: Vec<HostPort>,
        answered: &[HostPort],
        deadline: Instant,
    ) -> (Option<Topology>, Option<Fault>) {
        let candidates = self.askers.order(candidates, Instant::now());
        let (found, failure, asker) = self.discover(&candidates, deadline).await;
        let mut left_out = match (&found, &self.topology) {
            (Some(new), Some(old)) => askers::left_out(old, new),
            _ => vec![],
        };
        // Nothing left out (every check but a few): the reply as it is.
        let Some(asker) = asker.filter(|_| !left_out.is_empty()) else {
            return (found, failure);
        };
        // A node was left out, so a topology was read.
        let Some(mut topology) = found else {
            return (None, failure);
        };
        let mut kept = vec![];
        // The same node's CLUSTER SLOTS (not when it is what the topology came from).
        if !self.use_cluster_slots
            && let Some(slots) = self.cluster_slots(&asker, deadline).await
        {
            let (merged, put_back) = topology.put_back(&slots, &left_out);
            topology = merged;
            left_out.retain(|a| !put_back.contains(a));
            kept.extend(put_back);
        }
        // CLUSTER SLOTS leaves out failed replicas: another node's view for the rest.
        let second = candidates
            .iter()
            .find(|c| **c != asker && answered.contains(c) && !left_out.contains(c));
        if !left_out.is_empty()
            && let Some(second) = second.cloned()
            && let Ok((Some(other), _)) = self.topology_from(&second, deadline).await
        {
            let (merged, put_back) = topology.put_back(&other, &left_out);
            topology = merged;
            kept.extend(put_back);
        }
        if kept.is_empty() {
            return (Some(topology), failure);
        }
        if !self.askers.is_partial(&asker) {
            tracing::info!(
                node = %asker,
                left_out = ?kept.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "a node's CLUSTER SHARDS leaves out nodes that the cluster still lists; they are kept, and the node is asked last from now on"
            );
        }
        self.askers.found_partial(&asker, Instant::now());
        (Some(topology), failure)
    }

    /// `CLUSTER SLOTS` from `addr`, over the connection held to it; `None` when it fails. An
    /// ACL without it is asked once.
    async fn cluster_slots(&mut self, addr: &HostPort, deadline: Instant) -> Option<Topology> {
        const SLOTS: &str = "CLUSTER SLOTS";
        if self.refused.contains(SLOTS) {
            return None;
        }
        let mut conn = self.conns.get(addr)?.clone();
        self.commands.fetch_add(1, Ordering::Relaxed);
        let reply = timeout_at(
            deadline,
            redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<Value>(&mut conn),
        )
        .await
        .ok()?;
        match reply {
            Ok(v) => topology::parse_cluster_slots(&v).ok(),
            Err(e) => {
                if Reason::of(&e) == Reason::Permission {
                    self.refused(
                        SLOTS,
                        "a CLUSTER SHARDS reply that leaves a node out is taken as it is",
                    );
                }
                None
            }
        }
    }

    /// Fetches the topology from the first of `candidates` that answers. Returns the topology
    /// when one was read (even from a cluster that reports itself down), the failure, if any,
    /// and the node that gave the topology.
    async fn discover(
        &mut self,
        candidates: &[HostPort],
        deadline: Instant,
    ) -> (Option<Topology>, Option<Fault>, Option<HostPort>) {
        if !self.settings.cluster_mode {
            return (
                Some(Topology::standalone(self.settings.seeds[0].clone())),
                None,
                None,
            );
        }
        let mut last = Fault {
            reason: Reason::Other,
            detail: "no node answered to give the topology".into(),
        };
        for addr in candidates {
            match self.topology_from(addr, deadline).await {
                Ok((topology, failure)) => return (topology, failure, Some(addr.clone())),
                Err(f) => last = f,
            }
        }
        // The user may PING but not read the topology: check the seed alone rather than fail
        // a cluster that answers (the log line says what the ACL lacks).
        if last.reason == Reason::Permission && self.topology.is_none() {
            let seed = Topology::standalone(self.settings.seeds[0].clone());
            return (Some(seed), Some(last), None);
        }
        (None, Some(last), None)
    }

    /// Asks `addr` for the topology and CLUSTER INFO, in one pipeline. `Err` to try the next
    /// candidate.
    async fn topology_from(
        &mut self,
        addr: &HostPort,
        deadline: Instant,
    ) -> Result<(Option<Topology>, Option<Fault>), Fault> {
        let mut conn = self.connection(addr, deadline).await?;
        self.commands.fetch_add(2, Ordering::Relaxed);
        let shards_cmd = if self.use_cluster_slots {
            "SLOTS"
        } else {
            "SHARDS"
        };
        let reply = timeout_at(
            deadline,
            redis::pipe()
                .ignore_errors()
                .cmd("CLUSTER")
                .arg(shards_cmd)
                .cmd("CLUSTER")
                .arg("INFO")
                .query_async::<Vec<redis::RedisResult<Value>>>(&mut conn),
        )
        .await;
        let mut replies = match reply {
            Ok(Ok(r)) if r.len() == 2 => r.into_iter(),
            Ok(Ok(_)) => {
                return Err(Fault {
                    reason: Reason::Other,
                    detail: format!("{addr}: CLUSTER replies do not match the pipeline"),
                });
            }
            Ok(Err(e)) => {
                let f = Fault::redis(e);
                self.drop_on(addr, f.reason);
                return Err(f);
            }
            Err(_) => {
                self.conns.remove(addr);
                return Err(Fault::timeout());
            }
        };
        self.conns.insert(addr.clone(), conn);
        let (shards, cluster_info) = (replies.next(), replies.next());
        let shards = match shards {
            Some(Ok(v)) => v,
            Some(Err(e)) if !self.use_cluster_slots && shards_refused(&e) => {
                if Reason::of(&e) == Reason::Permission {
                    self.refused("CLUSTER SHARDS", "reading the topology with CLUSTER SLOTS");
                }
                self.use_cluster_slots = true;
                let (topology, failure, _) =
                    Box::pin(self.discover(std::slice::from_ref(addr), deadline)).await;
                return Ok((topology, failure));
            }
            Some(Err(e)) => {
                let f = Fault::redis(e);
                match f.reason {
                    Reason::Permission => self.refused(
                        "CLUSTER SLOTS",
                        "the topology is not followed; only the seed address is checked",
                    ),
                    Reason::ClusterModeDisabled => self.refused(
                        "CLUSTER",
                        "the server has cluster mode disabled; set REDIS_CLUSTER_MODE=false",
                    ),
                    _ => {}
                }
                return Err(Fault {
                    detail: format!("{addr}: {}", f.detail),
                    ..f
                });
            }
            None => unreachable!("two replies"),
        };
        let parsed = if self.use_cluster_slots {
            topology::parse_cluster_slots(&shards)
        } else {
            topology::parse_cluster_shards(&shards, self.settings.tls.is_some())
        };
        let t = parsed.map_err(|e| Fault {
            reason: Reason::Other,
            detail: format!("{addr}: {e}"),
        })?;
        let (t, dropped) = t.capped(self.settings.max_nodes);
        if dropped > 0 && self.dropped_nodes == 0 {
            tracing::warn!(
                node = %addr,
                dropped,
                kept = self.settings.max_nodes,
                "topology has more nodes than redis-probe follows; the rest are ignored"
            );
        }
        self.dropped_nodes = dropped;
        let cluster_info = match cluster_info {
            Some(Ok(v)) => redis::from_redis_value::<String>(v).ok(),
            Some(Err(e)) => {
                if Reason::of(&e) == Reason::Permission {
                    self.refused(
                        "CLUSTER INFO",
                        "cluster_state is not read; redis_cluster_* metrics are absent",
                    );
                }
                None
            }
            None => None,
        };
        let Some(cluster_info) = cluster_info else {
            return Ok((Some(t), None));
        };
        let cluster_info = info::ClusterInfo::parse(&cluster_info);
        // A node whose topology reply covers fewer slots than its own CLUSTER INFO says are
        // assigned does not see the shards whole: a Valkey node among Redis 7.0 nodes (which
        // send no shard id) lists each of them in a shard of its own, without slots. Another
        // node's view is taken instead.
        let covered: u64 = t.shards.iter().map(|s| u64::from(s.slots)).sum();
        if let Some(assigned) = cluster_info.0.slots_assigned
            && covered < assigned
            && self.dropped_nodes == 0
        {
            return Err(Fault {
                reason: Reason::Other,
                detail: format!(
                    "{addr}: its topology covers {covered} of the {assigned} slots assigned"
                ),
            });
        }
        let failure = (cluster_info.0.state_ok == Some(false)).then(|| Fault {
            reason: Reason::ClusterDown,
            detail: format!("{addr} reports cluster_state:fail"),
        });
        self.cluster_info = Some(cluster_info);
        Ok((Some(t), failure))
    }

    /// Cluster mode disabled: the server must be a primary, or the app's writes fail. Asks
    /// `INFO replication` (ROLE is in `@dangerous`); a replica's connection is dropped, so the
    /// next attempt dials again and follows a primary endpoint whose name moved.
    pub(super) async fn check_role(
        &mut self,
        addr: &HostPort,
        deadline: Instant,
    ) -> Result<(), Fault> {
        let Some(mut conn) = self.conns.get(addr).cloned() else {
            return Ok(());
        };
        self.commands.fetch_add(1, Ordering::Relaxed);
        let text = match view::section(&mut conn, "replication", deadline).await {
            Ok(t) => t,
            Err(f) if f.reason == Reason::Permission => {
                self.refused("INFO", "the role of the server is not checked, only PING");
                return Ok(());
            }
            Err(f) => {
                self.drop_on(addr, f.reason);
                return Err(f);
            }
        };
        let (fields, _) = info::parse_info(&text);
        match fields.get("role").map(|r| r.trim()) {
            Some("master") => Ok(()),
            Some(role) => {
                self.conns.remove(addr);
                Err(Fault {
                    reason: Reason::NotPrimary,
                    detail: format!("the server's role is {role}, not master"),
                })
            }
            None => {
                self.commands.fetch_add(1, Ordering::Relaxed);
                let server = view::section(&mut conn, "server", deadline).await;
                // Redis says `redis_mode:sentinel`; Valkey `server_mode:sentinel`.
                let sentinel = server.is_ok_and(|t| {
                    let info = info::parse_info(&t).0;
                    ["redis_mode", "server_mode"]
                        .iter()
                        .any(|k| info.get(*k).map(|m| m.trim()) == Some("sentinel"))
                });
                self.conns.remove(addr);
                Err(if sentinel {
                    Fault {
                        reason: Reason::Sentinel,
                        detail: "the address is a Sentinel; set REDIS_ADDRESS to the primary's"
                            .into(),
                    }
                } else {
                    Fault {
                        reason: Reason::Other,
                        detail: "INFO replication names no role".into(),
                    }
                })
            }
        }
    }

    /// Logs, once per command, that the server refused a command the probe sends, and what
    /// the probe does without it.
    pub(super) fn refused(&mut self, command: &'static str, consequence: &'static str) {
        if self.refused.insert(command) {
            tracing::warn!(
                command,
                user = self.settings.username.as_deref().unwrap_or("default"),
                "the server refused {command}: {consequence}"
            );
        }
    }
}

/// `CLUSTER SHARDS` is missing (Redis before 7.0: "unknown subcommand" on 6.x, "Wrong
/// CLUSTER subcommand" on 4.x and 5.x) or the ACL user may not run it: `CLUSTER SLOTS` next.
pub(super) fn shards_refused(e: &RedisError) -> bool {
    let s = e.to_string().to_ascii_lowercase();
    Reason::of(e) == Reason::Permission
        || s.contains("unknown subcommand")
        || s.contains("unknown command")
        || s.contains("wrong cluster subcommand")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each server generation's way of saying it has no CLUSTER SHARDS, and an ACL without it.
    #[test]
    fn shards_refusals_fall_back_to_cluster_slots() {
        let err =
            |code: &str, text: &str| redis::make_extension_error(code.into(), Some(text.into()));
        for e in [
            err(
                "ERR",
                "Unknown subcommand or wrong number of arguments for 'SHARDS'. Try CLUSTER HELP.",
            ),
            err("ERR", "Wrong CLUSTER subcommand or number of arguments"),
            err(
                "NOPERM",
                "this user has no permissions to run the 'cluster|shards' command",
            ),
        ] {
            assert!(shards_refused(&e), "{e}");
        }
        assert!(!shards_refused(&err(
            "ERR",
            "This instance has cluster support disabled"
        )));
    }
}
