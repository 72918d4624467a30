//! The idle canary: what the app's idle pooled connections live through.
//!
//! The health loop's connections carry a PING every interval, so they are never idle; the app's
//! pooled connections can sit idle for minutes, and something on the path (the server's
//! `timeout`, a load balancer's or firewall's idle timeout, 350 s in much of AWS) may forget
//! them; the next command then meets "connection reset by peer". Per node, the canary holds one
//! more connection, leaves it idle for a set age, then PINGs it: an answer is an idle that
//! survived, an error an idle cut at or below that age. The ages narrow down between the longest
//! idle that survived and the shortest that was cut ([`Search`]).
//!
//! Not every lost idle connection is a cut: a failover, a node restart or replacement, a
//! `CLIENT KILL`, a maxclients purge or IAM's 12-hour cut drop it too. Each loss gets its cause
//! ([`crate::disconnect`]): the canary waits for the health loop's next check (which records its
//! own lost connections and the nodes' changes as events), asks the node over a new connection
//! who it is now, and counts the loss as a cut only when nothing else explains it. A cut is
//! learned only when it happens twice at the same age ([`Search`]).
//!
//! A cut never touches readiness: the cluster is healthy; it is what the app's pool should be
//! told (`ConnMaxIdleTime` below it). `redis_idle_cut_seconds{node,by}` is the learned age and
//! who cuts (`server`: its `timeout` closed the connection; `path`: a reset on first use), and
//! one log line marks each change of it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

use crate::config::HostPort;
use crate::disconnect::{self, Cause, Seen};
use crate::events::{EventLog, Kind};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::probe::{Connector, Reason};

/// How the ages are chosen: start at the longest, halve the gap between what survived and what
/// was cut, and once they are close, confirm the cut now and then (a cut that no longer happens
/// clears, and the search starts again from the longest). A cut counts once it happened twice
/// in a row at the same age: the age after a first one is tried again.
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    max: Duration,
    /// The longest idle that survived since the last cut was learned.
    survived: Duration,
    /// The shortest idle seen cut (twice).
    cut: Option<Duration>,
    /// An age cut once, to be tried again before it counts.
    pending: Option<Duration>,
}

/// Closer than this (or a twentieth of the cut), the cut age is known well enough.
const RESOLUTION: Duration = Duration::from_secs(1);

impl Search {
    pub fn new(max: Duration) -> Self {
        Search {
            max,
            survived: Duration::ZERO,
            cut: None,
            pending: None,
        }
    }

    /// The learned cut age, if one was seen.
    pub fn cut(&self) -> Option<Duration> {
        self.cut
    }

    /// How long the next canary stays idle.
    pub fn next_age(&self) -> Duration {
        if let Some(p) = self.pending {
            return p;
        }
        match self.cut {
            None => self.max,
            Some(cut) => {
                let close = RESOLUTION.max(cut / 20);
                if cut.saturating_sub(self.survived) <= close {
                    cut
                } else {
                    (self.survived + cut) / 2
                }
            }
        }
    }

    /// One canary's outcome after `age` idle; returns the learned cut age when it changed.
    pub fn record(&mut self, age: Duration, survived: bool) -> Option<Option<Duration>> {
        let before = self.cut;
        if !survived && self.pending != Some(age) {
            // The first cut at this age: try it again before believing it.
            self.pending = Some(age);
            return None;
        }
        self.pending = None;
        if survived {
            self.survived = self.survived.max(age);
            if self.cut.is_some_and(|c| age >= c) {
                // What was cut before survives now: the path changed; search again.
                self.cut = None;
                self.survived = age;
            }
        } else {
            self.cut = Some(self.cut.map_or(age, |c| c.min(age)));
            if self.survived >= age {
                self.survived = Duration::ZERO;
            }
        }
        (self.cut != before).then_some(self.cut)
    }
}

/// Runs one canary per node of the published topology until dropped.
pub async fn watch(
    mut health: watch::Receiver<Health>,
    connector: Connector,
    metrics: Arc<Metrics>,
    events: EventLog,
    max_idle: Duration,
) {
    let causes: Vec<&'static str> = Cause::ALL.iter().map(|c| c.as_str()).collect();
    events.declare_disconnects("canary", &causes);
    let connector = Arc::new(connector);
    let mut canaries: HashMap<HostPort, JoinHandle<()>> = HashMap::new();
    loop {
        let nodes: Vec<HostPort> = health
            .borrow_and_update()
            .nodes
            .iter()
            .map(|n| n.addr.clone())
            .collect();
        if !nodes.is_empty() {
            canaries.retain(|addr, task| {
                let keep = nodes.contains(addr);
                if !keep {
                    task.abort();
                    metrics.canary.forget(&addr.to_string());
                }
                keep
            });
            for addr in nodes {
                canaries.entry(addr.clone()).or_insert_with(|| {
                    let c = Canary {
                        node: addr.to_string(),
                        addr,
                        connector: connector.clone(),
                        metrics: metrics.clone(),
                        events: events.clone(),
                        health: health.clone(),
                    };
                    tokio::spawn(c.run(max_idle))
                });
            }
        }
        if health.changed().await.is_err() {
            break;
        }
    }
    for task in canaries.values() {
        task.abort();
    }
}

/// One node's canary and what it reads.
struct Canary {
    addr: HostPort,
    node: String,
    connector: Arc<Connector>,
    metrics: Arc<Metrics>,
    events: EventLog,
    health: watch::Receiver<Health>,
}

/// How long an identity read may take.
const ASK: Duration = Duration::from_secs(5);

impl Canary {
    /// For ever: connect, PING, note who the node is, stay idle, PING; a failure gets its cause.
    async fn run(mut self, max: Duration) {
        let mut search = Search::new(max);
        let mut next = None;
        loop {
            let mut conn = match next.take() {
                Some(c) => c,
                None => match self.connector.connect(&self.addr).await {
                    Ok(c) => c,
                    Err(_) => {
                        // The node is down or refuses us: the health loop reports that.
                        sleep(Duration::from_secs(10)).await;
                        continue;
                    }
                },
            };
            if ping(&mut conn).await.is_err() {
                sleep(Duration::from_secs(10)).await;
                continue;
            }
            let before = crate::probe::identity(&mut conn, deadline()).await;
            let age = search.next_age();
            let idle_from = Instant::now();
            sleep(age).await;
            let failure = match ping(&mut conn).await {
                Ok(()) => {
                    self.metrics.canary.record(&self.node, "survived");
                    self.learnt(search.record(age, true), "");
                    next = Some(conn);
                    continue;
                }
                Err(reason) => reason,
            };
            drop(conn);
            self.wait_for_a_check().await;
            // A node that went away may come back as a new server (a restart, a replacement
            // under the same name): waited for, so that its identity tells.
            let mut again = self.connector.connect(&self.addr).await.ok();
            let waiting = Instant::now();
            while again.is_none() && waiting.elapsed() < WAIT_FOR_THE_NODE {
                sleep(Duration::from_secs(2)).await;
                again = self.connector.connect(&self.addr).await.ok();
            }
            let mut seen = Seen {
                before,
                failure: Some(failure),
                ..Seen::default()
            };
            if let Some(mut c) = again {
                seen.reached_again = true;
                seen.after = crate::probe::identity(&mut c, deadline()).await;
                next = Some(c);
            }
            seen.events = self
                .events
                .about_since(&self.node, idle_from)
                .iter()
                .map(|e| e.kind)
                .collect();
            let cause = disconnect::decide(&seen, age);
            self.events.disconnect("canary", &self.node, cause.as_str());
            match cause.idle_cut_by() {
                Some(by) => {
                    self.metrics.canary.record(&self.node, "cut");
                    self.learnt(search.record(age, false), by);
                }
                None => {
                    self.metrics.canary.record(&self.node, "explained");
                    tracing::info!(
                        node = %self.node,
                        cause = cause.as_str(),
                        idle_seconds = age.as_secs_f64(),
                        "the idle canary's connection was lost, not to an idle cut"
                    );
                }
            }
        }
    }

    /// Lets the health loop finish a check that started after now, so a server event that cut
    /// this connection (a kill of every client, a restart, a failover) is in the event log.
    async fn wait_for_a_check(&mut self) {
        let first = self.health.borrow_and_update().nodes.clone();
        let published = async {
            while self.health.changed().await.is_ok() {
                let h = self.health.borrow_and_update();
                if !Arc::ptr_eq(&h.nodes, &first) {
                    break;
                }
            }
        };
        let _ = timeout(Duration::from_secs(60), published).await;
    }

    /// The learned cut changed (`by`: who cuts).
    fn learnt(&self, change: Option<Option<Duration>>, by: &'static str) {
        let Some(cut) = change else {
            return;
        };
        self.metrics.canary.set_cut(&self.node, cut, by);
        match cut {
            Some(c) => {
                tracing::warn!(
                    node = %self.node,
                    idle_cut_seconds = c.as_secs_f64(),
                    by,
                    "an idle connection to the node was cut; the app's pooled connections idle longer than this meet resets"
                );
                self.events.push(
                    Kind::IdleCut,
                    Some(&self.node),
                    format!("{by} {:.0}s", c.as_secs_f64()),
                );
            }
            None => {
                tracing::info!(node = %self.node, "idle connections to the node are no longer cut");
                self.events.push(Kind::IdleCutCleared, Some(&self.node), "");
            }
        }
    }
}

/// How long a lost canary connection waits for its node to answer again before its cause is
/// decided without the node's word.
const WAIT_FOR_THE_NODE: Duration = Duration::from_secs(60);

fn deadline() -> Instant {
    Instant::now() + ASK
}

async fn ping(conn: &mut redis::aio::MultiplexedConnection) -> Result<(), Reason> {
    match timeout(
        Duration::from_secs(5),
        redis::cmd("PING").query_async::<String>(conn),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Reason::of(&e)),
        Err(_) => Err(Reason::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    /// A middlebox cutting idles above 350 s, the canary allowed 6 minutes: it learns the cut
    /// within a second in a handful of rounds, then keeps confirming it.
    #[test]
    fn narrows_down_to_the_cut() {
        let cut_above = s(350.0);
        let mut search = Search::new(s(360.0));
        let mut rounds = 0;
        while search.cut().is_none_or(|c| c - search.survived > s(17.5)) {
            let age = search.next_age();
            search.record(age, age <= cut_above);
            rounds += 1;
            assert!(rounds < 20, "{search:?}");
        }
        let c = search.cut().unwrap();
        assert!(c > cut_above && c <= s(360.0), "{c:?}");
        assert!(search.survived <= cut_above);
        assert_eq!(search.next_age(), c, "confirms the cut once close");
    }

    #[test]
    fn nothing_cut_keeps_the_longest_age() {
        let mut search = Search::new(s(360.0));
        for _ in 0..3 {
            assert_eq!(search.next_age(), s(360.0));
            assert_eq!(search.record(s(360.0), true), None);
        }
        assert_eq!(search.cut(), None);
    }

    /// A cut that no longer happens (a node restart during one idle, say) clears.
    /// One cut is tried again at the same age; it is learned only when it happens again, and a
    /// survival in between forgets it.
    #[test]
    fn a_cut_counts_when_it_happens_twice_at_the_same_age() {
        let mut search = Search::new(s(60.0));
        assert_eq!(search.record(s(60.0), false), None);
        assert_eq!(search.next_age(), s(60.0), "the same age again");
        assert_eq!(search.record(s(60.0), true), None);
        assert_eq!(search.cut(), None);
        assert_eq!(search.record(s(60.0), false), None);
        assert_eq!(search.record(s(60.0), false), Some(Some(s(60.0))));
    }

    #[test]
    fn a_cut_that_stops_happening_clears() {
        let mut search = Search::new(s(60.0));
        assert_eq!(search.record(s(60.0), false), None);
        assert_eq!(search.record(s(60.0), false), Some(Some(s(60.0))));
        assert_eq!(search.next_age(), s(30.0));
        search.record(s(30.0), true);
        assert_eq!(search.next_age(), s(45.0));
        assert_eq!(search.record(s(60.0), true), Some(None));
        assert_eq!(search.next_age(), s(60.0));
    }
}
