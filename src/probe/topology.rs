//! The cluster's shape: shards, their primary and replicas, and the addresses to reach them.
//!
//! Parsed from `CLUSTER SHARDS` (Redis 7+), or `CLUSTER SLOTS` on older servers. Parsers take a
//! [`redis::Value`] and never panic on odd input: anything unexpected is a [`ParseError`].

use std::fmt;

use redis::Value;

use crate::config::HostPort;

/// Slots in a Redis Cluster.
pub const SLOT_COUNT: u32 = 16384;

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Primary,
    Replica,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

impl serde::Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub addr: HostPort,
    pub role: Role,
}

/// One shard: the slots it serves and its nodes, primary first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub slots: u32,
    /// The primary that serves the slots, if the cluster names one.
    pub primary: Option<HostPort>,
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Topology {
    pub shards: Vec<Shard>,
}

impl Topology {
    /// One shard whose nodes all go by one host name (not an address), on different ports:
    /// what ElastiCache Serverless shows (its one virtual shard, a primary port and a read
    /// port, behind one name resolving to a proxy fleet). There the per-node maths (pools
    /// against maxclients) and shard counts do not describe the servers behind it.
    pub fn one_virtual_shard(&self) -> bool {
        let [shard] = self.shards.as_slice() else {
            return false;
        };
        let Some(first) = shard.nodes.first() else {
            return false;
        };
        let host = &first.addr.host;
        host.parse::<std::net::IpAddr>().is_err()
            && shard.nodes.len() > 1
            && shard.nodes.iter().all(|n| &n.addr.host == host)
    }

    /// A single server outside cluster mode.
    pub fn standalone(addr: HostPort) -> Self {
        Topology {
            shards: vec![Shard {
                slots: 0,
                primary: Some(addr.clone()),
                nodes: vec![Node {
                    addr,
                    role: Role::Primary,
                }],
            }],
        }
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.shards.iter().flat_map(|s| s.nodes.iter())
    }

    /// Puts the nodes of `addrs` that `from` lists back where `from` lists them: into the shard
    /// of the same primary, with `from`'s role. Where this topology has no shard with that
    /// primary (the two views disagree on it), into a shard of their own without slots or
    /// primary: followed, and counted in no shard. Returns the topology and the nodes put back.
    pub fn put_back(mut self, from: &Topology, addrs: &[HostPort]) -> (Topology, Vec<HostPort>) {
        let mut put_back = vec![];
        for shard in &from.shards {
            for node in shard.nodes.iter().filter(|n| addrs.contains(&n.addr)) {
                if self.nodes().any(|n| n.addr == node.addr) {
                    continue;
                }
                let at = match self
                    .shards
                    .iter()
                    .position(|s| s.primary.is_some() && s.primary == shard.primary)
                {
                    Some(i) => i,
                    None => {
                        self.shards.push(Shard {
                            slots: 0,
                            primary: None,
                            nodes: vec![],
                        });
                        self.shards.len() - 1
                    }
                };
                let target = &mut self.shards[at];
                target.nodes.push(node.clone());
                sort_nodes(&mut target.nodes, target.primary.as_ref());
                put_back.push(node.addr.clone());
            }
        }
        (ordered(self.shards), put_back)
    }

    /// Keeps at most `max` nodes (whole shards first, in order) and says how many were
    /// dropped: a topology that is huge, or hostile, must not grow connections, memory or series
    /// without bound.
    pub fn capped(mut self, max: usize) -> (Topology, usize) {
        let total = self.nodes().count();
        let mut room = max;
        for shard in &mut self.shards {
            shard.nodes.truncate(room);
            room -= shard.nodes.len();
        }
        self.shards.retain(|s| !s.nodes.is_empty());
        (self, total.saturating_sub(max))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected reply to {command}: {what}")]
pub struct ParseError {
    pub command: &'static str,
    pub what: &'static str,
}

fn err(command: &'static str, what: &'static str) -> ParseError {
    ParseError { command, what }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

/// A RESP2 flat `[k, v, k, v]` array or a RESP3 map, as pairs.
fn pairs(v: &Value) -> Option<Vec<(String, &Value)>> {
    match v {
        Value::Map(m) => m.iter().map(|(k, v)| Some((text(k)?, v))).collect(),
        Value::Array(a) if a.len() % 2 == 0 => {
            a.chunks(2).map(|c| Some((text(&c[0])?, &c[1]))).collect()
        }
        _ => None,
    }
}

fn array(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        _ => None,
    }
}

/// Parses `CLUSTER SHARDS`. `tls` picks the `tls-port` over the plain port.
pub fn parse_cluster_shards(v: &Value, tls: bool) -> Result<Topology, ParseError> {
    const C: &str = "CLUSTER SHARDS";
    let mut shards = vec![];
    for shard in array(v).ok_or(err(C, "not an array"))? {
        let fields = pairs(shard).ok_or(err(C, "shard is not a map"))?;
        let mut slots = 0u32;
        let mut nodes = vec![];
        let mut primary = None;
        let mut primary_online = false;
        for (k, v) in fields {
            match k.as_str() {
                "slots" => {
                    let ranges = array(v).ok_or(err(C, "slots is not an array"))?;
                    for pair in ranges.chunks(2) {
                        let [a, b] = pair else {
                            return Err(err(C, "odd slot range"));
                        };
                        let (a, b) = (int(a), int(b));
                        let (Some(a), Some(b)) = (a, b) else {
                            return Err(err(C, "slot is not a number"));
                        };
                        if !slot_range_ok(a, b) {
                            return Err(err(C, "slot out of range"));
                        }
                        slots += (b - a + 1) as u32;
                    }
                }
                "nodes" => {
                    for node in array(v).ok_or(err(C, "nodes is not an array"))? {
                        let f = pairs(node).ok_or(err(C, "node is not a map"))?;
                        let get = |name: &str| f.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
                        let endpoint = get("endpoint")
                            .and_then(text)
                            .filter(|e| !e.is_empty() && e != "?");
                        let host = endpoint
                            .or_else(|| get("ip").and_then(text))
                            .ok_or(err(C, "node has no address"))?;
                        let port = if tls {
                            get("tls-port").or(get("port"))
                        } else {
                            get("port")
                        };
                        let port = port
                            .and_then(port_number)
                            .ok_or(err(C, "node has no port"))?;
                        let addr = HostPort { host, port };
                        let role = match get("role").and_then(text).as_deref() {
                            Some("master") | Some("primary") => Role::Primary,
                            _ => Role::Replica,
                        };
                        let online = get("health").and_then(text).as_deref() == Some("online");
                        // After a failover the old primary can still be listed as a failed
                        // master; the online one serves the slots.
                        if role == Role::Primary
                            && (primary.is_none() || (online && !primary_online))
                        {
                            primary = Some(addr.clone());
                            primary_online = online;
                        }
                        nodes.push(Node { addr, role });
                    }
                }
                _ => {}
            }
        }
        sort_nodes(&mut nodes, primary.as_ref());
        shards.push(Shard {
            slots,
            primary,
            nodes,
        });
    }
    Ok(ordered(one_node_per_address(shards)))
}

/// One address, one node. A node replaced under the same name and port (ElastiCache's node
/// replacement) is listed twice until the old one is forgotten: the new server first as an
/// empty primary of a shard of its own, then as a second replica beside the old one. The
/// address stays in the shard that serves slots, where the app's commands go, once; a shard
/// left with no node is dropped. Without this the empty primary would read as a failover.
fn one_node_per_address(mut shards: Vec<Shard>) -> Vec<Shard> {
    let serving: std::collections::HashSet<HostPort> = shards
        .iter()
        .filter(|s| s.slots > 0)
        .flat_map(|s| s.nodes.iter().map(|n| n.addr.clone()))
        .collect();
    for s in &mut shards {
        if s.slots == 0 {
            s.nodes.retain(|n| !serving.contains(&n.addr));
            if s.primary.as_ref().is_some_and(|p| serving.contains(p)) {
                s.primary = None;
            }
        }
        // Sorted: the same address twice is adjacent, the primary's entry first.
        s.nodes.dedup_by(|a, b| a.addr == b.addr);
    }
    shards.retain(|s| !s.nodes.is_empty());
    shards
}

/// Parses `CLUSTER SLOTS`: `[[start, end, [host, port, id, ...], replica..., ], ...]`.
pub fn parse_cluster_slots(v: &Value) -> Result<Topology, ParseError> {
    const C: &str = "CLUSTER SLOTS";
    let mut shards: Vec<Shard> = vec![];
    for range in array(v).ok_or(err(C, "not an array"))? {
        let r = array(range).ok_or(err(C, "range is not an array"))?;
        if r.len() < 3 {
            return Err(err(C, "range too short"));
        }
        let (Some(a), Some(b)) = (int(&r[0]), int(&r[1])) else {
            return Err(err(C, "slot is not a number"));
        };
        if !slot_range_ok(a, b) {
            return Err(err(C, "slot out of range"));
        }
        let mut nodes = vec![];
        let mut primary = None;
        for (i, n) in r[2..].iter().enumerate() {
            let n = array(n).ok_or(err(C, "node is not an array"))?;
            let port = n
                .get(1)
                .and_then(port_number)
                .ok_or(err(C, "node has no port"))?;
            // An unknown endpoint (NULL, or "?") leaves the node out: the shard then has no
            // primary to PING, which is what it is to a client.
            let Some(host) = slots_host(n) else {
                continue;
            };
            let role = if i == 0 { Role::Primary } else { Role::Replica };
            let addr = HostPort { host, port };
            if i == 0 {
                primary = Some(addr.clone());
            }
            nodes.push(Node { addr, role });
        }
        let same = |s: &&mut Shard| match &primary {
            Some(p) => s.primary.as_ref() == Some(p),
            None => false,
        };
        match shards.iter_mut().find(same) {
            Some(s) => {
                s.slots += (b - a + 1) as u32;
                for n in nodes {
                    if !s.nodes.contains(&n) {
                        s.nodes.push(n);
                    }
                }
            }
            None => shards.push(Shard {
                slots: (b - a + 1) as u32,
                primary,
                nodes,
            }),
        }
    }
    Ok(ordered(shards))
}

/// A CLUSTER SLOTS node's address: its endpoint, else the `ip` of its metadata (Redis 7.0
/// gives it when the endpoint is a host name or unknown); `None` when neither is known.
fn slots_host(node: &[Value]) -> Option<String> {
    let endpoint = node
        .first()
        .and_then(text)
        .filter(|h| !h.is_empty() && h != "?");
    endpoint.or_else(|| {
        let meta = pairs(node.get(3)?)?;
        meta.into_iter()
            .find(|(k, _)| k == "ip")
            .and_then(|(_, v)| text(v))
            .filter(|h| !h.is_empty() && h != "?")
    })
}

/// A TCP port: 1 to 65535.
fn port_number(v: &Value) -> Option<u16> {
    int(v)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
}

/// `a..=b` is a range of slots.
fn slot_range_ok(a: i64, b: i64) -> bool {
    let slots = 0..i64::from(SLOT_COUNT);
    slots.contains(&a) && slots.contains(&b) && a <= b
}

fn sort_nodes(nodes: &mut [Node], primary: Option<&HostPort>) {
    nodes.sort_by(|a, b| {
        (Some(&a.addr) != primary, a.role, &a.addr).cmp(&(
            Some(&b.addr) != primary,
            b.role,
            &b.addr,
        ))
    });
}

/// Orders shards by primary address so that equal topologies compare equal.
fn ordered(mut shards: Vec<Shard>) -> Topology {
    shards.sort_by(|a, b| {
        a.primary.cmp(&b.primary).then_with(|| {
            a.nodes
                .first()
                .map(|n| &n.addr)
                .cmp(&b.nodes.first().map(|n| &n.addr))
        })
    });
    Topology { shards }
}

#[cfg(test)]
mod tests;
