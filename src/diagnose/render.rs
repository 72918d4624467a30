//! The report for a person: one function per section, aligned tables, a verdict line per
//! finding.

use std::fmt::{self, Write as _};

use super::{Connections, NodeReach, OtlpView, Reachability, Report, TopologyView};
use crate::probe::topology::SLOT_COUNT;

pub fn render_text(r: &Report) -> String {
    let mut o = String::new();
    write_report(&mut o, r).expect("writing to a String cannot fail");
    o
}

fn write_report(o: &mut String, r: &Report) -> fmt::Result {
    writeln!(o, "redis-probe diagnose\n")?;
    write_reachability(o, &r.reachability)?;
    write_topology(o, &r.topology)?;
    write_latency(o, r)?;
    write_connections(o, &r.connections)?;
    write_timeouts(o, r)?;
    write_otlp(o, &r.otlp)?;
    write_sidecar(o, r)?;
    super::history::write(o, &r.events)?;
    write_verdict(o, r)
}

fn write_reachability(o: &mut String, r: &Reachability) -> fmt::Result {
    writeln!(o, "== Reachability")?;
    for (addr, res) in &r.dns {
        match res {
            Ok(ips) => writeln!(o, "  DNS {addr} -> {}", ips.join(", "))?,
            Err(e) => writeln!(o, "  DNS {addr} -> FAILED: {e}")?,
        }
    }
    let (node, role, check, auth) = ("node", "role", "check", "auth");
    writeln!(o, "  {node:<22} {role:<8} {check:<18} {auth:<12} TLS")?;
    for n in &r.nodes {
        writeln!(
            o,
            "  {:<22} {:<8} {:<18} {:<12} {}",
            n.node,
            n.role.as_str(),
            n.check,
            n.auth.as_str(),
            tls_cell(n)
        )?;
    }
    Ok(())
}

fn tls_cell(n: &NodeReach) -> String {
    match &n.tls {
        None => "off".to_string(),
        Some(Err(e)) => format!("no handshake: {e}"),
        Some(Ok(c)) => format!(
            "{} {} names [{}], expires in {} days, {}",
            c.protocol,
            c.subject,
            c.names.join(", "),
            c.days_left,
            match &c.verify_error {
                None => "verified".to_string(),
                Some(e) => format!("NOT verified: {e}"),
            }
        ),
    }
}

fn write_topology(o: &mut String, t: &TopologyView) -> fmt::Result {
    writeln!(o, "\n== Topology")?;
    let state = match t.cluster_state_ok {
        Some(true) => "ok",
        Some(false) => "FAIL",
        None => "unknown",
    };
    if t.one_virtual_shard {
        writeln!(
            o,
            "  one virtual shard behind one host name (ElastiCache Serverless): shard counts do not apply, PROBE_EXPECTED_SHARDS is not compared"
        )?;
    }
    let declared = t.expected_shards.map_or("none".into(), |e| e.to_string());
    writeln!(
        o,
        "  {} shards serve slots ({declared} declared); {} of {SLOT_COUNT} slots covered; cluster_state {state}",
        t.live_shards, t.slots_covered,
    )?;
    for s in &t.shards {
        writeln!(
            o,
            "  shard: {:>5} slots  primary {:<22} replicas {}",
            s.slots,
            s.primary.as_deref().unwrap_or("NONE"),
            s.replicas.join(", ")
        )?;
    }
    Ok(())
}

fn write_latency(o: &mut String, r: &Report) -> fmt::Result {
    writeln!(o, "\n== Latency (PING round trip)")?;
    writeln!(
        o,
        "  {:<22} {:>7} {:>8} {:>9} {:>9} {:>9}",
        "node", "samples", "failed", "min ms", "median ms", "p99 ms"
    )?;
    for l in &r.latency {
        writeln!(
            o,
            "  {:<22} {:>7} {:>8} {:>9.3} {:>9.3} {:>9.3}",
            l.node, l.samples, l.failures, l.min_ms, l.median_ms, l.p99_ms
        )?;
    }
    Ok(())
}

fn write_connections(o: &mut String, c: &Connections) -> fmt::Result {
    writeln!(o, "\n== Connections")?;
    if c.one_virtual_shard {
        writeln!(
            o,
            "  one virtual shard (ElastiCache Serverless): the nodes are a proxy's ports, so the pool ceiling per node against maxclients is not computed"
        )?;
    }
    let unknown = |v: Option<u64>| v.map_or("?".into(), |v| v.to_string());
    let (node, clients, max, cut, pod) = ("node", "clients", "maxclients", "idle cut", "this pod");
    writeln!(o, "  {node:<22} {clients:>10} {max:>11} {cut:>9} {pod:>9}")?;
    for n in &c.nodes {
        let cut = n
            .idle_cut_seconds
            .map_or("-".into(), |s| format!("{s:.0} s"));
        writeln!(
            o,
            "  {:<22} {:>10} {:>11} {:>9} {:>9}",
            n.node,
            unknown(n.connected_clients),
            n.maxclients,
            cut,
            unknown(n.this_pod)
        )?;
    }
    if !c.app.is_empty() {
        writeln!(o, "  the app's connections (netlink sock_diag, tcp_info):")?;
        let (node, n, idle, rtt, re) = ("node", "count", "idle max", "rtt", "retransmits");
        writeln!(o, "  {node:<22} {n:>6} {idle:>10} {rtt:>9} {re:>12}")?;
        for a in &c.app {
            writeln!(
                o,
                "  {:<22} {:>6} {:>8.0} s {:>6.2} ms {:>12}",
                a.node, a.count, a.idle_max_s, a.rtt_ms, a.retransmits
            )?;
        }
    }
    let (used, pod) = (c.nodes_used_by_app, c.pod_ceiling.unwrap_or(0));
    match (c.pool_size, c.replicas, c.fleet_ceiling_per_node) {
        (Some(size), Some(replicas), Some(per_node)) => writeln!(
            o,
            "  ceiling: REDIS_POOL_SIZE {size} per node (go-redis) x {used} nodes = {pod} per pod; x {replicas} pods = {per_node} on one node vs maxclients {}",
            unknown(c.lowest_maxclients)
        ),
        (Some(size), None, _) => writeln!(
            o,
            "  ceiling: REDIS_POOL_SIZE {size} per node x {used} nodes = {pod} per pod (pass --replicas N for the fleet)",
        ),
        _ => writeln!(o, "  ceiling: REDIS_POOL_SIZE not set"),
    }
}

fn write_timeouts(o: &mut String, r: &Report) -> fmt::Result {
    let t = &r.timeouts;
    let kubelet = t
        .kubelet_probe_timeout_ms
        .map_or("not given".into(), |v| format!("{v} ms"));
    writeln!(o, "\n== Timeouts")?;
    writeln!(
        o,
        "  dial {} ms, read {} ms, attempt {} ms, kubelet probe {kubelet}; worst PING p99 {:.1} ms",
        t.dial_ms, t.read_ms, t.attempt_ms, t.worst_p99_ms
    )
}

fn write_otlp(o: &mut String, v: &OtlpView) -> fmt::Result {
    writeln!(o, "\n== OTLP")?;
    let protocol = v.protocol.unwrap_or("");
    match (&v.endpoint, &v.reachable) {
        (Some(e), Some(Ok(()))) => writeln!(o, "  {e} ({protocol}): one empty export accepted")?,
        (Some(e), Some(Err(why))) => {
            writeln!(o, "  {e} ({protocol}): one empty export failed: {why}")?
        }
        (Some(e), None) => writeln!(o, "  {e} ({protocol})")?,
        (None, _) if v.lint.is_empty() => writeln!(o, "  no OTLP endpoint configured")?,
        (None, _) => writeln!(o, "  no usable OTLP endpoint")?,
    }
    for lint in &v.lint {
        writeln!(o, "  lint: {lint}")?;
    }
    Ok(())
}

fn write_sidecar(o: &mut String, r: &Report) -> fmt::Result {
    let s = &r.sidecar;
    writeln!(o, "\n== Sidecar settings")?;
    writeln!(
        o,
        "  full outage -> 503: at most {:.0} s (connections refused), {:.0} s (nodes time out); recovery -> 200: at most {:.0} s",
        s.outage_refused_to_unready_s, s.outage_timeout_to_unready_s, s.recovery_to_ready_s
    )
}

fn write_verdict(o: &mut String, r: &Report) -> fmt::Result {
    writeln!(o, "\n== Verdict")?;
    if r.findings.is_empty() {
        writeln!(o, "  OK    nothing wrong found")?;
    }
    for f in &r.findings {
        let (section, code) = (f.section.as_str(), f.code.as_str());
        writeln!(o, "  FAIL  [{section}] {code}: {}", f.message)?;
    }
    Ok(())
}
