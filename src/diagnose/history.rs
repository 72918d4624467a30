//! What happened, from the sidecar running in this pod: its event log (`/events` on loopback at
//! its listen port), the last events, and each burst of the pod's connection resets lined up
//! with the node events just before it ("14 resets at 11:36:29; 127.0.0.1:7001 primary ->
//! replica at 11:36:27"). Empty when no sidecar answers there.

use std::fmt::{self, Write as _};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One event as `/events` gives it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventLine {
    pub ts: String,
    pub kind: String,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
}

/// Events shown at most.
const SHOWN: usize = 20;
/// How far before a reset burst an event may have caused it.
const BEFORE_A_BURST: Duration = Duration::from_secs(30);

/// `GET path` from the sidecar running in this pod (loopback, its listen port), head and body;
/// empty when none answers within a second.
pub async fn from_sidecar(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let request = format!("GET {path} HTTP/1.0\r\n\r\n");
        s.write_all(request.as_bytes()).await.ok()?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.ok()?;
        Some(raw)
    };
    tokio::time::timeout(Duration::from_secs(1), get)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// The running sidecar's events, oldest first.
pub async fn read(port: u16) -> Vec<EventLine> {
    let raw = from_sidecar(port, "/events").await;
    let Some((head, body)) = raw.split_once("\r\n\r\n") else {
        return vec![];
    };
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return vec![];
    }
    body.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn when(e: &EventLine) -> Option<std::time::SystemTime> {
    humantime::parse_rfc3339(&e.ts).ok()
}

fn describe(e: &EventLine) -> String {
    let mut s = e.kind.clone();
    if let Some(n) = &e.node {
        s.push(' ');
        s.push_str(n);
    }
    if let Some(d) = &e.detail {
        s.push(' ');
        s.push_str(d);
    }
    s
}

/// The section: each burst of resets with the events before it, then the last events.
pub fn write(o: &mut String, events: &[EventLine]) -> fmt::Result {
    writeln!(o, "\n== What happened (the running sidecar's events)")?;
    if events.is_empty() {
        return writeln!(o, "  no sidecar answered on this pod's listen port");
    }
    for (i, burst) in events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind == "pod_resets")
    {
        let at = when(burst);
        let causes: Vec<String> = events[..i]
            .iter()
            .filter(|e| e.kind != "pod_resets")
            .filter(|e| match (at, when(e)) {
                (Some(at), Some(t)) => at.duration_since(t).is_ok_and(|d| d <= BEFORE_A_BURST),
                _ => false,
            })
            .map(|e| format!("{} at {}", describe(e), e.ts))
            .collect();
        let resets = burst
            .detail
            .as_deref()
            .unwrap_or("")
            .trim_start_matches('+');
        match causes.as_slice() {
            [] => writeln!(
                o,
                "  {resets} resets at {}; no server event before it",
                burst.ts
            )?,
            c => writeln!(
                o,
                "  {resets} resets at {}; before it: {}",
                burst.ts,
                c.join("; ")
            )?,
        }
    }
    let start = events.len().saturating_sub(SHOWN);
    for e in &events[start..] {
        writeln!(o, "  {}  {}", e.ts, describe(e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(ts: &str, kind: &str, node: Option<&str>, detail: &str) -> EventLine {
        EventLine {
            ts: ts.into(),
            kind: kind.into(),
            node: node.map(str::to_string),
            detail: Some(detail.into()),
        }
    }

    #[test]
    fn a_burst_of_resets_is_lined_up_with_the_events_before_it() {
        let events = vec![
            e(
                "2026-12-07T11:30:00.000Z",
                "node_joined",
                Some("n1"),
                "replica",
            ),
            e(
                "2026-12-07T11:36:27.000Z",
                "role_changed",
                Some("n2"),
                "primary -> replica",
            ),
            e("2026-12-07T11:36:29.000Z", "pod_resets", None, "+14"),
        ];
        let mut o = String::new();
        write(&mut o, &events).unwrap();
        assert!(
            o.contains("14 resets at 2026-12-07T11:36:29.000Z; before it: role_changed n2 primary -> replica at 2026-12-07T11:36:27.000Z"),
            "{o}"
        );
        assert!(!o.contains("before it: node_joined"), "{o}");
        let mut empty = String::new();
        write(&mut empty, &[]).unwrap();
        assert!(empty.contains("no sidecar answered"));
    }
}
