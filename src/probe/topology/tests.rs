//! The topology parsers against replies of every server generation, and hostile ones.

use super::*;

fn b(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

#[allow(clippy::too_many_arguments)]
fn node(ip: &str, port: i64, tls_port: i64, role: &str, health: &str) -> Value {
    Value::Array(vec![
        b("id"),
        b("abc"),
        b("port"),
        Value::Int(port),
        b("tls-port"),
        Value::Int(tls_port),
        b("ip"),
        b(ip),
        b("endpoint"),
        b(ip),
        b("role"),
        b(role),
        b("replication-offset"),
        Value::Int(100),
        b("health"),
        b(health),
    ])
}

fn shard(slots: &[i64], nodes: Vec<Value>) -> Value {
    Value::Array(vec![
        b("slots"),
        Value::Array(slots.iter().map(|s| Value::Int(*s)).collect()),
        b("nodes"),
        Value::Array(nodes),
    ])
}

#[test]
fn shards_tls_ports_and_roles() {
    let v = Value::Array(vec![
        shard(
            &[5461, 10922],
            vec![
                node("127.0.0.1", 0, 7002, "master", "online"),
                node("127.0.0.1", 0, 7005, "replica", "online"),
            ],
        ),
        shard(
            &[0, 5460],
            vec![
                node("127.0.0.1", 0, 7004, "replica", "online"),
                node("127.0.0.1", 0, 7001, "master", "online"),
            ],
        ),
        shard(
            &[10923, 16383],
            vec![node("127.0.0.1", 0, 7003, "master", "online")],
        ),
    ]);
    let t = parse_cluster_shards(&v, true).unwrap();
    assert_eq!(t.shards.len(), 3);
    assert_eq!(t.shards.iter().map(|s| s.slots).sum::<u32>(), 16384);
    assert_eq!(
        t.shards[0].primary.as_ref().unwrap().to_string(),
        "127.0.0.1:7001"
    );
    assert_eq!(t.shards[0].nodes[0].role, Role::Primary);
    assert_eq!(t.shards[0].nodes[1].addr.port, 7004);
    assert_eq!(t.nodes().count(), 5);
    // Without TLS the plain port (0 here) is not usable.
    assert!(parse_cluster_shards(&v, false).is_err());
}

#[test]
fn failed_old_primary_does_not_hide_the_new_one() {
    let v = Value::Array(vec![shard(
        &[0, 16383],
        vec![
            node("10.0.0.1", 6379, 0, "master", "failed"),
            node("10.0.0.2", 6379, 0, "master", "online"),
        ],
    )]);
    let t = parse_cluster_shards(&v, false).unwrap();
    assert_eq!(t.shards[0].primary.as_ref().unwrap().host, "10.0.0.2");
}

#[test]
fn resp3_maps() {
    let n = Value::Map(vec![
        (b("ip"), b("10.0.0.9")),
        (b("port"), Value::Int(6380)),
        (b("role"), b("master")),
    ]);
    let s = Value::Map(vec![
        (
            b("slots"),
            Value::Array(vec![Value::Int(0), Value::Int(99)]),
        ),
        (b("nodes"), Value::Array(vec![n])),
    ]);
    let t = parse_cluster_shards(&Value::Array(vec![s]), false).unwrap();
    assert_eq!(t.shards[0].slots, 100);
    assert_eq!(
        t.shards[0].primary.as_ref().unwrap().to_string(),
        "10.0.0.9:6380"
    );
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    let cases = vec![
        Value::Nil,
        Value::Int(3),
        Value::Array(vec![Value::Nil]),
        Value::Array(vec![b("slots")]),
        Value::Array(vec![shard(&[0], vec![])]),
        Value::Array(vec![shard(&[5, 2], vec![])]),
        Value::Array(vec![shard(&[0, 99999], vec![])]),
        Value::Array(vec![shard(
            &[0, 1],
            vec![Value::Array(vec![b("ip"), b("x")])],
        )]),
        Value::Array(vec![shard(
            &[0, 1],
            vec![node("x", 70000, 0, "master", "online")],
        )]),
    ];
    for c in cases {
        assert!(parse_cluster_shards(&c, false).is_err(), "{c:?}");
        let _ = parse_cluster_slots(&c);
    }
}

#[test]
fn cluster_slots() {
    let entry = |a: i64, z: i64, ports: &[i64]| {
        let mut v = vec![Value::Int(a), Value::Int(z)];
        for p in ports {
            v.push(Value::Array(vec![b("127.0.0.1"), Value::Int(*p), b("id")]));
        }
        Value::Array(v)
    };
    let v = Value::Array(vec![
        entry(0, 100, &[7001, 7004]),
        entry(101, 16383, &[7002]),
        entry(200, 300, &[7001, 7004]),
    ]);
    let t = parse_cluster_slots(&v).unwrap();
    assert_eq!(t.shards.len(), 2);
    assert_eq!(t.shards[0].slots, 101 + 101);
    assert_eq!(t.shards[0].nodes.len(), 2);
}

#[test]
fn a_huge_topology_is_capped() {
    let shard = |i: u16| Shard {
        slots: 1,
        primary: None,
        nodes: (0..3)
            .map(|j| Node {
                addr: HostPort {
                    host: format!("10.0.{i}.{j}"),
                    port: 6379,
                },
                role: Role::Replica,
            })
            .collect(),
    };
    let t = Topology {
        shards: (0..10).map(shard).collect(),
    };
    let (capped, dropped) = t.clone().capped(7);
    assert_eq!((capped.nodes().count(), dropped), (7, 23));
    assert_eq!(capped.shards.len(), 3);
    // In the reply's order: the first shards whole, the next one cut at the cap.
    assert_eq!(capped.shards[..2], t.shards[..2]);
    assert_eq!(capped.shards[2].nodes, t.shards[2].nodes[..1]);
    let (same, dropped) = t.clone().capped(1000);
    assert_eq!((same, dropped), (t, 0));
}

/// Valkey 9.1 adds `availability-zone` to both replies; unknown keys are ignored.
#[test]
fn availability_zone_is_ignored() {
    let mut n = match node("10.0.0.1", 6379, 0, "master", "online") {
        Value::Array(a) => a,
        _ => unreachable!(),
    };
    n.extend([b("availability-zone"), b("use1-az1")]);
    let v = Value::Array(vec![shard(&[0, 16383], vec![Value::Array(n)])]);
    let t = parse_cluster_shards(&v, false).unwrap();
    assert_eq!(t.shards[0].primary.as_ref().unwrap().host, "10.0.0.1");

    let slots = Value::Array(vec![Value::Array(vec![
        Value::Int(0),
        Value::Int(16383),
        Value::Array(vec![
            b("10.0.0.1"),
            Value::Int(6379),
            b("id1"),
            Value::Array(vec![b("availability-zone"), b("use1-az1")]),
        ]),
    ])]);
    let t = parse_cluster_slots(&slots).unwrap();
    assert_eq!(
        t.shards[0].primary.as_ref().unwrap().to_string(),
        "10.0.0.1:6379"
    );
}

/// `cluster-preferred-endpoint-type unknown-endpoint`: CLUSTER SLOTS gives NULL or "?" as
/// the endpoint. The metadata's `ip` is used when given; a node with neither is left out
/// instead of failing the whole topology.
#[test]
fn cluster_slots_unknown_endpoints() {
    let entry = |endpoint: Value, port: i64, meta: Vec<Value>| {
        Value::Array(vec![
            endpoint,
            Value::Int(port),
            b("id"),
            Value::Array(meta),
        ])
    };
    let v = Value::Array(vec![
        Value::Array(vec![
            Value::Int(0),
            Value::Int(8191),
            entry(Value::Nil, 7001, vec![b("ip"), b("10.0.0.1")]),
            entry(b("?"), 7004, vec![]),
        ]),
        Value::Array(vec![
            Value::Int(8192),
            Value::Int(16383),
            entry(b("?"), 7002, vec![]),
            entry(b("node-3.example"), 7005, vec![b("ip"), b("10.0.0.5")]),
        ]),
    ]);
    let t = parse_cluster_slots(&v).unwrap();
    assert_eq!(t.shards.len(), 2);
    let with_primary: Vec<_> = t.shards.iter().filter_map(|s| s.primary.clone()).collect();
    assert_eq!(with_primary.len(), 1, "{t:?}");
    assert_eq!(with_primary[0].to_string(), "10.0.0.1:7001");
    let hosts: Vec<String> = t.nodes().map(|n| n.addr.to_string()).collect();
    assert!(
        hosts.contains(&"node-3.example:7005".to_string()),
        "{hosts:?}"
    );
    assert!(!hosts.iter().any(|h| h.starts_with('?')), "{hosts:?}");
}

/// A replica replaced under the same name and port, before the old one is forgotten: the new
/// server as an empty primary, then as a second replica. The address stays one replica of the
/// shard that serves slots.
#[test]
fn a_replaced_node_is_one_node() {
    let empty_primary = Value::Array(vec![
        shard(
            &[0, 16383],
            vec![
                node("10.0.0.1", 6379, 0, "master", "online"),
                node("10.0.0.2", 6379, 0, "replica", "online"),
            ],
        ),
        shard(&[], vec![node("10.0.0.2", 6379, 0, "master", "online")]),
    ]);
    let two_replicas = Value::Array(vec![shard(
        &[0, 16383],
        vec![
            node("10.0.0.1", 6379, 0, "master", "online"),
            node("10.0.0.2", 6379, 0, "replica", "failed"),
            node("10.0.0.2", 6379, 0, "replica", "online"),
        ],
    )]);
    for reply in [empty_primary, two_replicas] {
        let t = parse_cluster_shards(&reply, false).unwrap();
        assert_eq!(t.shards.len(), 1, "{t:?}");
        let replica: Vec<_> = t.nodes().filter(|n| n.addr.host == "10.0.0.2").collect();
        assert_eq!(replica.len(), 1, "{t:?}");
        assert_eq!(replica[0].role, Role::Replica);
    }
}

/// What a Valkey 8.0 primary answered after an upgrade from Redis 7.0: its CLUSTER SHARDS
/// leaves out its own replica, which its CLUSTER SLOTS lists. The replica is put back into its
/// primary's shard, as a replica; a node neither lists stays out, and one already there is not
/// put back twice.
#[test]
fn nodes_left_out_of_cluster_shards_are_put_back_from_cluster_slots() {
    let shards = Value::Array(vec![
        shard(
            &[0, 8191],
            vec![node("10.0.0.1", 0, 7001, "master", "online")],
        ),
        shard(
            &[8192, 16383],
            vec![
                node("10.0.0.2", 0, 7002, "master", "online"),
                node("10.0.0.4", 0, 7004, "replica", "online"),
            ],
        ),
    ]);
    let shards = parse_cluster_shards(&shards, true).unwrap();
    let entry = |a: i64, z: i64, ports: &[i64]| {
        let mut v = vec![Value::Int(a), Value::Int(z)];
        for p in ports {
            let ip = format!("10.0.0.{}", p - 7000);
            v.push(Value::Array(vec![b(&ip), Value::Int(*p), b("id")]));
        }
        Value::Array(v)
    };
    let slots = parse_cluster_slots(&Value::Array(vec![
        entry(0, 8191, &[7001, 7003]),
        entry(8192, 16383, &[7002, 7004]),
    ]))
    .unwrap();
    let addr = |i: u16| HostPort {
        host: format!("10.0.0.{i}"),
        port: 7000 + i,
    };
    let (t, put_back) = shards
        .clone()
        .put_back(&slots, &[addr(3), addr(4), addr(5)]);
    assert_eq!(put_back, [addr(3)]);
    let first = &t.shards[0];
    assert_eq!(first.primary, Some(addr(1)));
    assert_eq!(first.slots, 8192);
    assert_eq!(
        first.nodes,
        [
            Node {
                addr: addr(1),
                role: Role::Primary
            },
            Node {
                addr: addr(3),
                role: Role::Replica
            }
        ]
    );
    assert_eq!(t.nodes().count(), 4);
    // A primary this topology does not know: followed, in no shard that serves slots.
    let elsewhere =
        parse_cluster_slots(&Value::Array(vec![entry(0, 8191, &[7005, 7006])])).unwrap();
    let (t, put_back) = shards.clone().put_back(&elsewhere, &[addr(6)]);
    assert_eq!(put_back, [addr(6)]);
    let lone = t
        .shards
        .iter()
        .find(|s| s.nodes[0].addr == addr(6))
        .unwrap();
    assert_eq!((lone.slots, &lone.primary), (0, &None));
    assert_eq!(lone.nodes[0].role, Role::Replica);
    // Nothing to put back: the same topology.
    assert_eq!(
        shards.clone().put_back(&slots, &[addr(5)]),
        (shards, vec![])
    );
}
