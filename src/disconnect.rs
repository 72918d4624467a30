//! Why a connection was lost: a closed set of causes, decided from what the sidecar can see.
//!
//! The idle canary's connection sits idle, then meets an error; before that counts as a cut by
//! the path (or by the server's `timeout`), every server event that would also explain it is
//! ruled out: the node restarted (`run_id` changed, or `uptime_in_seconds` went back), changed
//! role (a failover), left the topology, or dropped every client at once (the health loop's own
//! connection to it fell in the same window). What is left is told apart by how it failed: a
//! reset on first use after the idle is the path forgetting the flow; a close (EOF) the server
//! closing an idle client.

use std::time::Duration;

use crate::events::Kind;
use crate::probe::Reason;
use crate::probe::info::Identity;

/// The cause of one lost connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The node restarted (a replacement, an engine upgrade, a crash).
    NodeRestarted,
    /// The node's role changed.
    Failover,
    /// The node left the topology.
    NodeLeft,
    /// The node dropped the sidecar's other connection too (`CLIENT KILL`, a maximum age, a
    /// maxclients purge).
    AllClientsDropped,
    /// The server closed the idle connection (its `timeout`).
    ServerIdleTimeout,
    /// Something on the path forgot the idle flow: a reset on first use, the server unaffected.
    PathIdleCut,
    /// None of the above could be told (the node could not be reached again to ask).
    Unknown,
}

impl Cause {
    pub const ALL: [Cause; 7] = [
        Cause::NodeRestarted,
        Cause::Failover,
        Cause::NodeLeft,
        Cause::AllClientsDropped,
        Cause::ServerIdleTimeout,
        Cause::PathIdleCut,
        Cause::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::NodeRestarted => "node_restarted",
            Cause::Failover => "failover",
            Cause::NodeLeft => "node_left",
            Cause::AllClientsDropped => "all_clients_dropped",
            Cause::ServerIdleTimeout => "server_idle_timeout",
            Cause::PathIdleCut => "path_idle_cut",
            Cause::Unknown => "unknown",
        }
    }

    /// Who cut an idle connection, when this cause is an idle cut: `server` or `path`.
    pub fn idle_cut_by(self) -> Option<&'static str> {
        match self {
            Cause::ServerIdleTimeout => Some("server"),
            Cause::PathIdleCut => Some("path"),
            _ => None,
        }
    }
}

/// What was seen of one lost idle connection.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// The node as it was when the connection was made.
    pub before: Option<Identity>,
    /// The node as it is now, read over a new connection; `None` when it could not be read.
    pub after: Option<Identity>,
    /// The node could be reached again.
    pub reached_again: bool,
    /// Events about the node between the connection's last use and now.
    pub events: Vec<Kind>,
    /// How the connection failed.
    pub failure: Option<Reason>,
}

/// Decides the cause of a connection lost after `idle`.
pub fn decide(seen: &Seen, idle: Duration) -> Cause {
    let has = |k: Kind| seen.events.contains(&k);
    if has(Kind::NodeLeft) {
        return Cause::NodeLeft;
    }
    let restarted = match (&seen.before, &seen.after) {
        (Some(b), Some(a)) => restarted(b, a, idle),
        _ => false,
    };
    if restarted || has(Kind::NodeRestarted) {
        return Cause::NodeRestarted;
    }
    let role_changed = match (&seen.before, &seen.after) {
        (Some(b), Some(a)) => b.role.is_some() && a.role.is_some() && b.role != a.role,
        _ => false,
    };
    if role_changed || has(Kind::RoleChanged) {
        return Cause::Failover;
    }
    if has(Kind::ConnectionLost) || has(Kind::NodeDown) {
        return Cause::AllClientsDropped;
    }
    if !seen.reached_again {
        return Cause::Unknown;
    }
    match seen.failure {
        Some(Reason::ConnectionReset) => Cause::PathIdleCut,
        Some(Reason::ConnectionClosed) => Cause::ServerIdleTimeout,
        _ => Cause::Unknown,
    }
}

/// Why the health loop's own connection to a node was lost, decided from what followed it:
/// the node restarted (seen at the next INFO read), changed role or left (seen at the next
/// checks), or the canary lost its connection to the node in the same window (every client
/// dropped). A node that went down (`node_down`) may come back as a new server (a restart, a
/// replacement under the same name), which the first INFO read after it answers tells: that is
/// waited for until `waited` says the wait is over, then the node going away dropped every
/// client. `None` while nothing has told yet.
pub fn health_cause(events_since: &[Kind], canary_lost_too: bool, waited: bool) -> Option<Cause> {
    let has = |k: Kind| events_since.contains(&k);
    let went_away = has(Kind::NodeDown);
    if has(Kind::NodeLeft) {
        Some(Cause::NodeLeft)
    } else if has(Kind::NodeRestarted) {
        Some(Cause::NodeRestarted)
    } else if has(Kind::RoleChanged) {
        Some(Cause::Failover)
    } else if (canary_lost_too && !went_away) || (waited && went_away) {
        Some(Cause::AllClientsDropped)
    } else if waited {
        Some(Cause::Unknown)
    } else {
        None
    }
}

/// The node restarted between two reads `elapsed` apart: another `run_id`, or an uptime that
/// went back (a second of slack for the clock the server counts in).
pub fn restarted(before: &Identity, after: &Identity, elapsed: Duration) -> bool {
    if let (Some(b), Some(a)) = (&before.run_id, &after.run_id) {
        return b != a;
    }
    match (before.uptime_seconds, after.uptime_seconds) {
        (Some(b), Some(a)) => a + 1 < b.saturating_add(elapsed.as_secs()).saturating_sub(1),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(run: &str, uptime: u64, role: &str) -> Option<Identity> {
        Some(Identity {
            run_id: Some(run.into()),
            uptime_seconds: Some(uptime),
            role: Some(role.into()),
            ..Identity::default()
        })
    }

    fn seen(failure: Reason) -> Seen {
        Seen {
            before: id("a", 100, "master"),
            after: id("a", 120, "master"),
            reached_again: true,
            events: vec![],
            failure: Some(failure),
        }
    }

    const IDLE: Duration = Duration::from_secs(20);

    #[test]
    fn an_unexplained_reset_is_the_path_and_a_close_the_server() {
        assert_eq!(
            decide(&seen(Reason::ConnectionReset), IDLE),
            Cause::PathIdleCut
        );
        assert_eq!(
            decide(&seen(Reason::ConnectionClosed), IDLE),
            Cause::ServerIdleTimeout
        );
        assert_eq!(decide(&seen(Reason::Timeout), IDLE), Cause::Unknown);
    }

    #[test]
    fn server_events_explain_the_loss() {
        let mut s = seen(Reason::ConnectionReset);
        s.after = id("b", 3, "master");
        assert_eq!(decide(&s, IDLE), Cause::NodeRestarted);
        let mut s = seen(Reason::ConnectionReset);
        s.after = id("a", 120, "slave");
        assert_eq!(decide(&s, IDLE), Cause::Failover);
        for (kind, cause) in [
            (Kind::NodeLeft, Cause::NodeLeft),
            (Kind::NodeRestarted, Cause::NodeRestarted),
            (Kind::RoleChanged, Cause::Failover),
            (Kind::ConnectionLost, Cause::AllClientsDropped),
        ] {
            let mut s = seen(Reason::ConnectionClosed);
            s.events = vec![kind];
            assert_eq!(decide(&s, IDLE), cause, "{kind:?}");
        }
        let mut s = seen(Reason::ConnectionReset);
        s.reached_again = false;
        s.after = None;
        assert_eq!(decide(&s, IDLE), Cause::Unknown);
    }

    #[test]
    fn the_health_loops_losses_wait_for_what_explains_them() {
        assert_eq!(health_cause(&[], false, false), None);
        assert_eq!(health_cause(&[], false, true), Some(Cause::Unknown));
        assert_eq!(
            health_cause(&[], true, false),
            Some(Cause::AllClientsDropped)
        );
        // A node that went down: its restart is waited for, then it dropped every client.
        let down = [Kind::ConnectionLost, Kind::NodeDown];
        assert_eq!(health_cause(&down, true, false), None);
        assert_eq!(
            health_cause(&down, false, true),
            Some(Cause::AllClientsDropped)
        );
        let back_new = [
            Kind::ConnectionLost,
            Kind::NodeDown,
            Kind::NodeBack,
            Kind::NodeRestarted,
        ];
        assert_eq!(
            health_cause(&back_new, true, false),
            Some(Cause::NodeRestarted)
        );
        assert_eq!(
            health_cause(&[Kind::ConnectionLost, Kind::NodeRestarted], true, false),
            Some(Cause::NodeRestarted)
        );
        assert_eq!(
            health_cause(&[Kind::RoleChanged], false, false),
            Some(Cause::Failover)
        );
        assert_eq!(
            health_cause(&[Kind::NodeLeft], false, false),
            Some(Cause::NodeLeft)
        );
    }

    #[test]
    fn a_restart_is_a_new_run_id_or_an_uptime_that_went_back() {
        let b = id("a", 100, "master").unwrap();
        assert!(!restarted(&b, &id("a", 120, "master").unwrap(), IDLE));
        assert!(restarted(&b, &id("b", 120, "master").unwrap(), IDLE));
        let no_run = |u| Identity {
            uptime_seconds: Some(u),
            ..Identity::default()
        };
        assert!(!restarted(&no_run(100), &no_run(120), IDLE));
        assert!(restarted(&no_run(100), &no_run(5), IDLE));
    }
}
