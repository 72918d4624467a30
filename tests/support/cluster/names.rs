//! Nodes announced by names of their own, and a node replaced as ElastiCache replaces one: a
//! new server at a new address under the same name and port, the name moved to it.

use std::path::PathBuf;
use std::time::Duration;

use super::{Cluster, Node};

/// The name node `i` is announced by with [`super::Options::host_names`].
pub fn node_name(i: usize) -> String {
    format!("node{i}.redis-probe.test")
}

impl Cluster {
    /// The hosts file mapping each node's name to its address (readable by anyone): what the
    /// sidecar resolves names with ([`crate::support::Sidecar::spawn_resolving`]).
    pub fn hosts_file(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    /// Writes the hosts file in place (the sidecar's bind mount keeps its inode).
    pub(super) fn write_hosts(&self) {
        let mut text = String::from("127.0.0.1 localhost\n");
        for n in self.nodes.iter().filter(|n| n.host != n.ip) {
            text.push_str(&format!("{} {}\n", n.ip, n.host));
        }
        let path = self.hosts_file();
        std::fs::write(&path, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    /// Replaces replica `i`: the old server is stopped, a new one with an empty state starts on
    /// `ip` (same name, same ports), meets the cluster, replicates the same primary, the old
    /// node is forgotten by every node, and the name is moved to the new address. Returns the
    /// old and new node ids.
    pub fn replace_replica(&mut self, i: usize, ip: &str) -> (String, String) {
        assert!(self.host_names, "replacement needs nodes announced by name");
        let old = self.node_id(i);
        let primary = self
            .cli(i, &["CLUSTER", "NODES"])
            .lines()
            .find(|l| l.contains("myself"))
            .and_then(|l| l.split(' ').nth(3).map(str::to_string))
            .expect("the replica's primary");
        self.kill_node(i);
        let dir = self.dir.path().join(format!("node{i}-replacement"));
        std::fs::create_dir_all(&dir).unwrap();
        let n = &self.nodes[i];
        self.nodes[i] = Node {
            host: n.host.clone(),
            ip: ip.to_string(),
            port: n.port,
            public_port: n.public_port,
            bus_port: n.bus_port,
            dir,
            server: n.server.clone(),
            child: None,
        };
        self.write_conf(i, true);
        self.start_node(i);
        self.wait_pong(i);
        let (port, bus) = (
            self.nodes[i].port.to_string(),
            self.nodes[i].bus_port.to_string(),
        );
        let p = self
            .running(None)
            .into_iter()
            .find(|&j| self.node_id(j) == primary)
            .expect("the primary is running");
        let out = self.cli(p, &["CLUSTER", "MEET", ip, &port, &bus]);
        assert!(out.contains("OK"), "MEET: {out}");
        self.wait_for(
            Duration::from_secs(30),
            "the new node knows the primary",
            |c| c.cli(i, &["CLUSTER", "NODES"]).contains(&primary),
        );
        let out = self.cli(i, &["CLUSTER", "REPLICATE", &primary]);
        assert!(out.contains("OK"), "REPLICATE: {out}");
        // The old node is forgotten once the new one is a replica in sync and every node says
        // so (forgotten earlier, the new server would be listed alone as an empty primary).
        self.wait_for(Duration::from_secs(60), "the new replica in sync", |c| {
            let r = c.cli(i, &["INFO", "replication"]);
            r.contains("role:slave") && r.contains("master_link_status:up")
        });
        let new = self.node_id(i);
        self.wait_for(
            Duration::from_secs(30),
            "every node knows the new replica",
            |c| {
                c.running(None).into_iter().all(|j| {
                    c.cli(j, &["CLUSTER", "NODES"])
                        .lines()
                        .any(|l| l.starts_with(&new) && l.contains("slave"))
                })
            },
        );
        for j in self.running(None).into_iter().filter(|&j| j != i) {
            self.cli(j, &["CLUSTER", "FORGET", &old]);
        }
        self.cli(i, &["CLUSTER", "FORGET", &old]);
        self.write_hosts();
        (old, new)
    }
}
