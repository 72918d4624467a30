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
//! A cut never touches readiness: the cluster is healthy; it is what the app's pool should be
//! told (`ConnMaxIdleTime` below it). `redis_idle_cut_seconds{node}` is the learned age, and one
//! log line marks each change of it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};

use crate::config::HostPort;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::probe::Connector;

/// How the ages are chosen: start at the longest, halve the gap between what survived and what
/// was cut, and once they are close, confirm the cut now and then (a cut that no longer happens
/// clears, and the search starts again from the longest).
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    max: Duration,
    /// The longest idle that survived since the last cut was learned.
    survived: Duration,
    /// The shortest idle seen cut.
    cut: Option<Duration>,
}

/// Closer than this (or a twentieth of the cut), the cut age is known well enough.
const RESOLUTION: Duration = Duration::from_secs(1);

impl Search {
    pub fn new(max: Duration) -> Self {
        Search {
            max,
            survived: Duration::ZERO,
            cut: None,
        }
    }

    /// The learned cut age, if one was seen.
    pub fn cut(&self) -> Option<Duration> {
        self.cut
    }

    /// How long the next canary stays idle.
    pub fn next_age(&self) -> Duration {
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
    max_idle: Duration,
) {
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
                    let (connector, metrics) = (connector.clone(), metrics.clone());
                    tokio::spawn(canary(addr, connector, metrics, max_idle))
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

/// One node's canary, for ever: connect, PING, stay idle, PING.
async fn canary(addr: HostPort, connector: Arc<Connector>, metrics: Arc<Metrics>, max: Duration) {
    let node = addr.to_string();
    let mut search = Search::new(max);
    loop {
        let mut conn = match connector.connect(&addr).await {
            Ok(c) => c,
            Err(_) => {
                // The node is down or refuses us: the health loop reports that.
                sleep(Duration::from_secs(10)).await;
                continue;
            }
        };
        if ping(&mut conn).await.is_err() {
            sleep(Duration::from_secs(10)).await;
            continue;
        }
        let age = search.next_age();
        sleep(age).await;
        let survived = ping(&mut conn).await.is_ok();
        metrics.canary.record(&node, survived);
        if let Some(cut) = search.record(age, survived) {
            metrics.canary.set_cut(&node, cut);
            match cut {
                Some(c) => tracing::warn!(
                    node = %node,
                    idle_cut_seconds = c.as_secs_f64(),
                    "an idle connection to the node was cut; the app's pooled connections idle longer than this meet resets"
                ),
                None => {
                    tracing::info!(node = %node, "idle connections to the node are no longer cut")
                }
            }
        }
    }
}

async fn ping(conn: &mut redis::aio::MultiplexedConnection) -> Result<(), ()> {
    match timeout(
        Duration::from_secs(5),
        redis::cmd("PING").query_async::<String>(conn),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        _ => Err(()),
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
    #[test]
    fn a_cut_that_stops_happening_clears() {
        let mut search = Search::new(s(60.0));
        assert_eq!(search.record(s(60.0), false), Some(Some(s(60.0))));
        assert_eq!(search.next_age(), s(30.0));
        search.record(s(30.0), true);
        assert_eq!(search.next_age(), s(45.0));
        assert_eq!(search.record(s(60.0), true), Some(None));
        assert_eq!(search.next_age(), s(60.0));
    }
}
