//! redis-probe: a Kubernetes sidecar that health-checks a Redis Cluster over its own TLS+AUTH
//! connections and serves `/livez`, `/readyz` and `/metrics` from published state.
//!
//! # Layout
//! - [`config`]: defaults < TOML file < environment, validated into one [`config::Config`];
//!   every key declared once in [`config::keys`]. Nothing else reads the environment.
//! - [`probe`]: the only code that talks to Redis: one connection per node (its own dial: one
//!   TLS client configuration, system roots read once), topology discovery, PING, INFO, the
//!   role check with cluster mode disabled, the one host resolver, and the closed set of
//!   failure [`probe::Reason`]s. Knows nothing of HTTP, readiness or metrics.
//! - [`breaker`]: the circuit breaker, a pure state machine over check results and time.
//! - [`schedule`]: jitter and the retry backoff schedule.
//! - [`health`]: the background loop that runs checks, feeds the breaker and metrics, and
//!   publishes a [`health::Health`] snapshot on a `watch` channel.
//! - [`pool`]: the pod's connections to Redis on its own cadence: through [`sockdiag`] (netlink,
//!   filtered by the kernel, with `tcp_info`), else `/proc/net/tcp`; and the pod's TCP reset
//!   counters ([`tcpstats`]).
//! - [`canary`]: one idle connection per node that learns the idle age the path cuts, once
//!   [`disconnect`] has ruled out every server event that would also explain a lost connection.
//! - [`events`]: the bounded log of what happened (nodes, connections, the breaker, cuts),
//!   written by the health loop and the canary, served on `/events`.
//! - [`checks`]: checks beside Redis, each its own task and `watch`: the app's readiness
//!   (gating) and the OTLP collector (never gating).
//! - [`certs`]: the node certificates' expiry, read every few hours and when nodes join.
//! - [`cpulimit`]: the CPU the cgroup's CFS quota allows, which paces `/metrics`.
//! - [`otlp`]: the OpenTelemetry exporter variables and their lint.
//! - [`metrics`]: the Prometheus registry, in groups; each group registers its series and is
//!   written through methods named for what happened.
//! - [`server`]: hyper handlers that read the published state; no request waits on Redis (a
//!   scrape over the CPU limit's pace waits on a timer).
//! - [`diagnose`]: the one-shot report of `redis-probe diagnose`, reusing the probe, pool and
//!   checks: one function gathers each section, one renders it.
//! - [`logging`]: JSON (`ts`, `level`, `msg`) or text log lines.
//! - [`spawn`]: the one start-up wiring, used by the binary, by [`run`] and by embedders.
//!
//! Data flows one way, and the imports follow it:
//! ```text
//! config -> spawn ─┬─> health loop (probe, breaker) ──watch: Health──┬─> server
//!                  │                                                 ├─> pool watcher ──┐
//!                  │                                                 ├─> idle canary ───┤
//!   health loop and canary ──> events (log) ──> canary, server (/events)               │
//!                  │                                                 └─> cert watcher ──┤
//!                  └─> side checks (app, otlp) ──────watch: CheckState──> server        │
//!   health loop, side checks, watchers and canary ──> metrics <── server (on scrape) ┘
//! ```

#![forbid(unsafe_code)]

pub mod breaker;
pub mod canary;
pub mod certs;
pub mod checks;
pub mod config;
pub mod cpulimit;
pub mod diagnose;
pub mod disconnect;
pub mod events;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod otlp;
pub mod pool;
pub mod probe;
pub mod schedule;
pub mod server;
pub mod sockdiag;
pub mod tcpstats;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::config::{Config, Warning, WarningKind};
use crate::health::{HealthLoop, Timing};
use crate::metrics::Metrics;
use crate::probe::RedisProbe;
use crate::schedule::RandomJitter;
use crate::server::AppState;

/// What [`spawn`] started: the state the server reads, and the background tasks. Dropping
/// `tasks` aborts every one of them.
pub struct Sidecar {
    pub state: Arc<AppState>,
    pub tasks: JoinSet<()>,
}

/// The configuration's warnings and those of the machine it runs on (a TLS trust store with no
/// certificate in it): logged at start, counted in `redis_probe_config_warning`.
pub fn start_warnings(config: &Config) -> Vec<Warning> {
    let mut warnings = config.warnings.clone();
    let trust = config.redis.tls.as_ref();
    if let Some(message) = trust.and_then(probe::tls::trust_store_problem) {
        let kind = WarningKind::NoTrustStore;
        warnings.push(Warning { kind, message });
    }
    warnings
}

/// Starts everything the configuration asks for, in the current tokio runtime: the health
/// loop (with its INFO reads), the pool watcher (where `/proc/net/tcp` exists), the certificate
/// watcher (with TLS) and the checks beside Redis. Fails only when the password file cannot be
/// read.
pub fn spawn(config: &Config) -> std::io::Result<Sidecar> {
    let pool_available = std::path::Path::new("/proc/net/tcp").exists();
    if !pool_available {
        tracing::warn!(
            "/proc/net/tcp not found: the pod's connection counts (redis_pool_*) are not exported"
        );
    }
    let metrics = Arc::new(Metrics::with_options(metrics::Options {
        expected_shards: config.observe.expected_shards,
        pool: pool_available,
        pool_ceiling: pool_available
            && (config.redis.app_pool.size.is_some() || config.observe.pool_max_conns.is_some()),
        client_cert: config
            .redis
            .tls
            .as_ref()
            .is_some_and(|t| t.client.is_some()),
    }));
    metrics.set_config_warnings(start_warnings(config).iter().map(|w| w.kind));
    let events = events::EventLog::new(metrics.clone());
    let (health_loop, health) = HealthLoop::new(
        RedisProbe::new(&config.redis)?,
        Timing::from_config(config),
        breaker::Settings::from_config(config),
        RandomJitter,
        metrics.clone(),
    );
    let health_loop = health_loop.with_events(events.clone());
    let health_loop = match config.observe.info_interval {
        Some(every) => health_loop.with_info(every, config.observe.maxclients),
        None => health_loop,
    };
    let mut tasks = JoinSet::new();
    tasks.spawn(health_loop.run());
    if pool_available {
        let settings = pool::Settings::from_config(config);
        let events = Some(events.clone());
        tasks.spawn(pool::watch(
            health.clone(),
            metrics.clone(),
            settings,
            events,
        ));
    }
    if let Some(tls) = &config.redis.tls {
        let timeout = config.probe.attempt_timeout;
        let watcher = certs::watch(health.clone(), metrics.clone(), tls.clone(), timeout);
        tasks.spawn(watcher);
    }
    if let Some(max_idle) = config.observe.idle_canary {
        match probe::Connector::new(&config.redis) {
            Ok(c) => {
                let events = events.clone();
                let canary = canary::watch(health.clone(), c, metrics.clone(), events, max_idle);
                tasks.spawn(canary);
            }
            Err(e) => tracing::warn!(problem = %e, "idle canary not started"),
        }
    }
    let side_checks = checks::spawn_all(config, &metrics, RandomJitter, &mut tasks);
    let state =
        AppState::new(health, metrics, config.probe.on_failure, side_checks).with_events(events);
    tasks.spawn(server::follow_cpu_limit(state.clone()));
    Ok(Sidecar { state, tasks })
}

/// Runs the sidecar on `listener` until `shutdown` completes: [`spawn`], then the HTTP server
/// in front. On shutdown `/readyz` turns 503 at once, in-flight requests get a grace period,
/// then this returns and the background tasks stop.
pub async fn run(
    config: &Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let sidecar = spawn(config)?;
    let draining = sidecar.state.clone();
    server::serve(listener, sidecar.state.clone(), async move {
        shutdown.await;
        draining.start_draining();
    })
    .await;
    drop(sidecar);
    Ok(())
}
