//! Parsers for `INFO` and `CLUSTER INFO` replies: `key:value` lines, `# Section` headers.
//!
//! A line that is not `key:value` is counted as an error and skipped; a field that is missing
//! or not a number is left out. Nothing here panics on odd input.

use std::collections::HashMap;

/// `key:value` pairs of an INFO-style reply, and how many lines did not parse.
pub fn parse_info(text: &str) -> (HashMap<&str, &str>, u32) {
    let mut fields = HashMap::new();
    let mut errors = 0;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(':') {
            Some((k, v)) if !k.is_empty() && !k.contains(char::is_whitespace) => {
                fields.insert(k, v);
            }
            _ => errors += 1,
        }
    }
    (fields, errors)
}

fn num(fields: &HashMap<&str, &str>, key: &str) -> Option<u64> {
    fields.get(key)?.trim().parse().ok()
}

/// What `INFO server clients stats` says about one node: who it is and its connections.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeInfo {
    pub identity: Identity,
    pub connected_clients: Option<u64>,
    /// `maxclients` (in `INFO clients` since Redis 7).
    pub maxclients: Option<u64>,
    pub rejected_connections: Option<u64>,
    pub total_connections_received: Option<u64>,
}

impl NodeInfo {
    pub fn parse(text: &str) -> (NodeInfo, u32) {
        let (f, errors) = parse_info(text);
        let info = NodeInfo {
            identity: Identity::from_fields(&f),
            connected_clients: num(&f, "connected_clients"),
            maxclients: num(&f, "maxclients"),
            rejected_connections: num(&f, "rejected_connections"),
            total_connections_received: num(&f, "total_connections_received"),
        };
        (info, errors)
    }
}

/// Which server a node is and since when (`INFO server`), and its role (`INFO replication`)
/// when that was read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// `valkey` when the server says `server_name:valkey`, else `redis`.
    pub engine: Option<&'static str>,
    /// `valkey_version` on Valkey (whose `redis_version` stays 7.2.4), else `redis_version`.
    pub version: Option<String>,
    pub run_id: Option<String>,
    pub uptime_seconds: Option<u64>,
    /// `role` of `INFO replication` (`master`, `slave`).
    pub role: Option<String>,
}

impl Identity {
    pub fn parse(text: &str) -> Identity {
        Identity::from_fields(&parse_info(text).0)
    }

    fn from_fields(f: &HashMap<&str, &str>) -> Identity {
        let text = |k: &str| {
            f.get(k)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty() && v.len() <= 64)
                .map(str::to_string)
        };
        let valkey = f.get("server_name").map(|v| v.trim()) == Some("valkey")
            || f.contains_key("valkey_version");
        let version = if valkey {
            text("valkey_version")
        } else {
            text("redis_version")
        };
        let engine = match (valkey, f.contains_key("redis_version")) {
            (true, _) => Some("valkey"),
            (false, true) => Some("redis"),
            (false, false) => None,
        };
        Identity {
            engine,
            version: version.filter(|v| {
                v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            }),
            run_id: text("run_id"),
            uptime_seconds: num(f, "uptime_in_seconds"),
            role: text("role"),
        }
    }
}

/// `CLUSTER INFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClusterInfo {
    pub state_ok: Option<bool>,
    pub slots_assigned: Option<u64>,
    pub slots_ok: Option<u64>,
    pub slots_pfail: Option<u64>,
    pub slots_fail: Option<u64>,
    pub known_nodes: Option<u64>,
    /// Shards that serve at least one slot.
    pub size: Option<u64>,
}

impl ClusterInfo {
    pub fn parse(text: &str) -> (ClusterInfo, u32) {
        let (f, errors) = parse_info(text);
        let info = ClusterInfo {
            state_ok: f.get("cluster_state").map(|s| s.trim() == "ok"),
            slots_assigned: num(&f, "cluster_slots_assigned"),
            slots_ok: num(&f, "cluster_slots_ok"),
            slots_pfail: num(&f, "cluster_slots_pfail"),
            slots_fail: num(&f, "cluster_slots_fail"),
            known_nodes: num(&f, "cluster_known_nodes"),
            size: num(&f, "cluster_size"),
        };
        (info, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from redis-server 7.0.15 (`INFO clients stats`, trimmed).
    const INFO: &str = "# Clients\r\nconnected_clients:7\r\ncluster_connections:10\r\nmaxclients:10000\r\nclient_recent_max_input_buffer:20480\r\nblocked_clients:0\r\n\r\n# Stats\r\ntotal_connections_received:42\r\ntotal_commands_processed:1234\r\nrejected_connections:3\r\nsync_full:1\r\n";

    /// Captured `CLUSTER INFO` of a 3-shard cluster with one failed shard.
    const CLUSTER: &str = "cluster_state:fail\r\ncluster_slots_assigned:16384\r\ncluster_slots_ok:10923\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:5461\r\ncluster_known_nodes:6\r\ncluster_size:3\r\ncluster_current_epoch:7\r\n";

    #[test]
    fn node_info() {
        let (i, errors) = NodeInfo::parse(INFO);
        assert_eq!(errors, 0);
        assert_eq!(i.connected_clients, Some(7));
        assert_eq!(i.maxclients, Some(10000));
        assert_eq!(i.rejected_connections, Some(3));
        assert_eq!(i.total_connections_received, Some(42));
    }

    #[test]
    fn redis_6_has_no_maxclients_in_info() {
        let (i, _) = NodeInfo::parse("# Clients\r\nconnected_clients:1\r\n");
        assert_eq!(i.maxclients, None);
    }

    #[test]
    fn cluster_info() {
        let (c, errors) = ClusterInfo::parse(CLUSTER);
        assert_eq!(errors, 0);
        assert_eq!(c.state_ok, Some(false));
        assert_eq!(c.slots_fail, Some(5461));
        assert_eq!(c.size, Some(3));
        assert_eq!(c.known_nodes, Some(6));
    }

    #[test]
    fn malformed_input_is_counted() {
        let (i, errors) = NodeInfo::parse(
            "connected_clients:lots\nno colon here\n:novalue\n\u{0}\u{ff}garbage\nmaxclients:5",
        );
        assert_eq!(errors, 3);
        assert_eq!(i.connected_clients, None);
        assert_eq!(i.maxclients, Some(5));
        let (c, _) = ClusterInfo::parse("");
        assert_eq!(c, ClusterInfo::default());
    }

    #[test]
    fn identity_of_redis_and_valkey() {
        let redis = Identity::parse(
            "# Server\r\nredis_version:7.0.15\r\nredis_mode:cluster\r\nrun_id:abc123\r\nuptime_in_seconds:42\r\n",
        );
        assert_eq!(redis.engine, Some("redis"));
        assert_eq!(redis.version.as_deref(), Some("7.0.15"));
        assert_eq!(redis.run_id.as_deref(), Some("abc123"));
        assert_eq!(redis.uptime_seconds, Some(42));
        // Valkey keeps redis_version at 7.2.4 for clients that read it.
        let valkey = Identity::parse(
            "# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:8.0.1\r\nserver_mode:cluster\r\nrun_id:def\r\n# Replication\r\nrole:slave\r\n",
        );
        assert_eq!(valkey.engine, Some("valkey"));
        assert_eq!(valkey.version.as_deref(), Some("8.0.1"));
        assert_eq!(valkey.role.as_deref(), Some("slave"));
        // A version that would make a strange label is left out.
        let odd = Identity::parse("redis_version:7.0 \"x\"{}\r\n");
        assert_eq!(odd.version, None);
    }
}
