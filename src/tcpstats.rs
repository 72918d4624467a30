//! The pod's TCP reset and abort counters, from its network namespace (`/proc/net/snmp` and
//! `/proc/net/netstat`): containers of a pod share the namespace, so these count the app's
//! connections too. A rise while Redis is healthy is the app meeting resets (an idle cut, a
//! node replaced, maxclients).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// The counters exported, by `kind` label: (file, section, field).
pub const KINDS: [(&str, &str, &str, &str); 5] = [
    ("estab_resets", "snmp", "Tcp", "EstabResets"),
    ("out_resets", "snmp", "Tcp", "OutRsts"),
    ("abort_on_data", "netstat", "TcpExt", "TCPAbortOnData"),
    ("abort_on_close", "netstat", "TcpExt", "TCPAbortOnClose"),
    ("abort_on_timeout", "netstat", "TcpExt", "TCPAbortOnTimeout"),
];

/// Fields of a `/proc/net/snmp`-style text: a header line and a value line per section.
pub fn parse(text: &str) -> HashMap<(String, String), u64> {
    let mut out = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((section, names)), Some((section2, values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        if section != section2 {
            continue;
        }
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = v.parse() {
                out.insert((section.to_string(), n.to_string()), v);
            }
        }
    }
    out
}

/// The counters of the namespace under `proc_net` (`/proc/net`); a missing file leaves its
/// counters out.
pub fn read(proc_net: &Path) -> Vec<(&'static str, u64)> {
    let files: HashMap<&str, HashMap<(String, String), u64>> = ["snmp", "netstat"]
        .into_iter()
        .filter_map(|f| Some((f, parse(&std::fs::read_to_string(proc_net.join(f)).ok()?))))
        .collect();
    KINDS
        .iter()
        .filter_map(|(kind, file, section, field)| {
            let v = files
                .get(file)?
                .get(&(section.to_string(), field.to_string()))?;
            Some((*kind, *v))
        })
        .collect()
}

/// The app's connections to one node, as the kernel sees them.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeTcp {
    pub node: String,
    /// Mean smoothed round-trip time.
    pub rtt: Duration,
    /// The longest time since one of them last received data.
    pub idle_max: Duration,
    /// Each socket (inode) and its retransmissions so far.
    pub sockets: Vec<(u64, u32)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_and_netstat() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm EstabResets OutRsts\nTcp: 1 7 9\n";
        let f = parse(snmp);
        assert_eq!(f[&("Tcp".into(), "EstabResets".into())], 7);
        assert_eq!(f[&("Tcp".into(), "OutRsts".into())], 9);
        // Odd input: no panic, nothing made up.
        assert!(parse("Tcp: A B\nUdp: 1 2\n").is_empty());
        assert!(parse("garbage").is_empty());
    }

    #[test]
    fn this_namespace() {
        let read = read(Path::new("/proc/net"));
        assert_eq!(read.len(), KINDS.len(), "{read:?}");
    }
}
