//! The parsers of what Redis and the kernel send (CLUSTER SHARDS, CLUSTER SLOTS, INFO,
//! /proc/net/tcp) under arbitrary input: they return errors or counts, never panic or
//! overflow (tests build with overflow checks on).

use proptest::prelude::*;
use redis::Value;
use redis_probe::pool::parse_line;
use redis_probe::probe::info::{ClusterInfo, NodeInfo, parse_info};
use redis_probe::probe::topology::{parse_cluster_shards, parse_cluster_slots};

/// Field names the CLUSTER SHARDS parser looks for, so generated maps reach its inner paths.
const KEYS: &[&str] = &[
    "slots", "nodes", "endpoint", "ip", "port", "tls-port", "role", "health", "id",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::Int),
        (-2i64..20_000).prop_map(Value::Int),
        proptest::collection::vec(any::<u8>(), 0..12).prop_map(Value::BulkString),
        prop::sample::select(KEYS).prop_map(|k| Value::BulkString(k.as_bytes().to_vec())),
        prop::sample::select(&["master", "replica", "online", "?", "", "6379", "-1"][..])
            .prop_map(|s| Value::SimpleString(s.to_string())),
        Just(Value::Nil),
    ]
}

/// Nested arrays and maps of scalars, the shapes both topology replies are made of.
fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(5, 200, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::vec((inner.clone(), inner), 0..6).prop_map(Value::Map),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn topology_parsers_never_panic(v in value(), tls in any::<bool>()) {
        if let Ok(t) = parse_cluster_shards(&v, tls) {
            // Whatever was accepted holds no more slots than a cluster has.
            let slots: u64 = t.shards.iter().map(|s| u64::from(s.slots)).sum();
            prop_assert!(slots <= 16384 * 64);
        }
        let _ = parse_cluster_slots(&v);
    }

    #[test]
    fn info_parsers_never_panic(text in "(\\PC{0,40}\r?\n){0,20}") {
        let (fields, errors) = parse_info(&text);
        prop_assert!(fields.len() + errors as usize <= text.lines().count());
        let _ = NodeInfo::parse(&text);
        let _ = ClusterInfo::parse(&text);
    }

    #[test]
    fn info_numbers_never_overflow(n in any::<u128>()) {
        let text = format!("connected_clients:{n}\r\nmaxclients:{n}\r\ncluster_slots_ok:{n}\r\n");
        let (info, _) = NodeInfo::parse(&text);
        prop_assert_eq!(info.connected_clients, u64::try_from(n).ok());
        let _ = ClusterInfo::parse(&text);
    }

    #[test]
    fn proc_net_tcp_lines_never_panic(line in "[ 0-9A-Fa-f:x]{0,160}") {
        let _ = parse_line(&line);
    }

    #[test]
    fn proc_net_tcp_fields_of_any_width(
        local in "[0-9A-F]{0,40}:[0-9A-F]{0,6}",
        remote in "[0-9A-F]{0,40}:[0-9A-F]{0,6}",
        inode in "[0-9]{0,25}",
    ) {
        let line = format!("   0: {local} {remote} 01 00000000:00000000 00:00000000 00000000  1000 0 {inode} 1");
        let _ = parse_line(&line);
    }
}
