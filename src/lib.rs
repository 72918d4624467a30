//! redis-probe: a Kubernetes sidecar that health-checks a Redis Cluster over its own TLS+AUTH
//! connections and serves `/livez`, `/readyz` and `/metrics` from published state.
//!
//! # Layout
//! - [`config`]: defaults < TOML file < environment, validated into one [`config::Config`].
//!   Nothing else reads the environment.
//! - [`probe`]: the only code that talks to Redis: one connection per node, topology
//!   discovery, PING, and the closed set of failure [`probe::Reason`]s.
//! - [`breaker`]: the circuit breaker, a pure state machine over check results and time.
//! - [`schedule`]: jitter and the retry backoff schedule.
//! - [`health`]: the background loop that runs checks, feeds the breaker and metrics, and
//!   publishes a [`health::Health`] snapshot on a `watch` channel.
//! - [`metrics`]: the Prometheus registry.
//! - [`pool`]: the pod's connections to Redis, counted from `/proc/net/tcp` on its own cadence.
//! - [`checks`]: checks beside Redis: the app's own readiness (gating) and the OTLP collector.
//! - [`otlp`]: the OpenTelemetry exporter variables and their lint.
//! - [`server`]: hyper handlers that read the snapshot; no request waits on Redis.
//! - [`diagnose`]: the one-shot report of `redis-probe diagnose`, reusing the probe, pool and checks.
//! - [`logging`]: JSON (`ts`, `level`, `msg`) or text log lines.
//!
//! Data flows one way: config -> probe -> health loop -> (watch, metrics) -> server.

pub mod breaker;
pub mod checks;
pub mod config;
pub mod diagnose;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod otlp;
pub mod pool;
pub mod probe;
pub mod schedule;
pub mod server;

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::health::HealthLoop;
use crate::metrics::Metrics;
use crate::probe::RedisProbe;
use crate::schedule::RandomJitter;
use crate::server::AppState;

/// Installs rustls's ring provider as the process default. redis-rs brings rustls without a
/// provider; with none (or two) installed, building a TLS client panics inside a tokio worker
/// and surfaces as an unrelated-looking connection error.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Runs the sidecar on `listener` until `shutdown` completes: the health loop in the
/// background, the HTTP server in front. On shutdown `/readyz` turns 503 at once, in-flight
/// requests get a grace period, then this returns.
pub async fn run(
    config: &Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    install_crypto_provider();
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
    }));
    let probe = RedisProbe::new(&config.redis)?;
    let (health_loop, health) = HealthLoop::new(
        probe,
        health::Schedule::from_config(config),
        config.breaker(),
        RandomJitter,
        metrics.clone(),
        config.probe.on_failure,
    );
    let health_loop =
        health_loop.with_info(config.observe.info_interval, config.observe.maxclients);
    let pool_task = pool_available.then(|| {
        tokio::spawn(pool::watch(
            health.clone(),
            metrics.clone(),
            pool::Settings::from_config(config),
        ))
    });
    let task = tokio::spawn(health_loop.run());
    metrics.set_config_warnings(config.checks.otlp_findings.iter().map(|f| f.kind));
    let (extras, mut extra_tasks) = spawn_extra_checks(config, &metrics);
    if let Some(tls) = &config.redis.tls {
        extra_tasks.push(tokio::spawn(watch_certificates(
            health.clone(),
            metrics.clone(),
            tls.clone(),
            config.probe.attempt_timeout,
        )));
    }
    let state = AppState::with_extras(health, metrics, config.probe.on_failure, extras);
    let draining = state.clone();
    server::serve(listener, state, async move {
        shutdown.await;
        draining.start_draining();
    })
    .await;
    task.abort();
    if let Some(t) = pool_task {
        t.abort();
    }
    extra_tasks.iter().for_each(tokio::task::JoinHandle::abort);
    Ok(())
}

/// How often node certificates are read: their expiry changes only when they are replaced.
const CERT_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// Exports each node's certificate expiry: after the first check that found nodes, then every
/// [`CERT_CHECK_INTERVAL`]. One short TLS connection per node each time.
async fn watch_certificates(
    mut health: health::Rx,
    metrics: Arc<Metrics>,
    tls: config::TlsConfig,
    timeout: std::time::Duration,
) {
    loop {
        let nodes: Vec<config::HostPort> = health
            .borrow()
            .nodes
            .iter()
            .map(|n| n.addr.clone())
            .collect();
        if nodes.is_empty() {
            if health.changed().await.is_err() {
                return;
            }
            continue;
        }
        for addr in nodes {
            if let Ok(info) = probe::tls::inspect(&addr, &tls, timeout).await {
                metrics
                    .server
                    .cert_expiry
                    .get_or_create(&metrics::NodeLabel {
                        node: addr.to_string(),
                    })
                    .set(info.not_after);
            }
        }
        tokio::time::sleep(CERT_CHECK_INTERVAL).await;
    }
}

/// Starts the checks beside Redis that the configuration asks for: the app's readiness
/// (gating) and the OTLP collector (never gating).
fn spawn_extra_checks(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> (Vec<checks::Extra>, Vec<tokio::task::JoinHandle<()>>) {
    let mut extras = vec![];
    let mut tasks = vec![];
    let mut start = |name: &'static str, target: checks::Target, timeout, threshold, critical| {
        let (tx, rx) = tokio::sync::watch::channel(checks::CheckState::default());
        metrics.register_extra_check(name);
        tasks.push(tokio::spawn(checks::run(
            name,
            target,
            timeout,
            threshold,
            config.probe.interval,
            config.probe.jitter,
            RandomJitter,
            metrics.clone(),
            tx,
        )));
        extras.push(checks::Extra {
            name,
            critical,
            state: rx,
        });
    };
    if let Some(uri) = &config.checks.upstream {
        let c = &config.checks;
        start(
            "app",
            checks::Target::Readiness(uri.clone()),
            c.upstream_timeout,
            c.upstream_failure_threshold,
            true,
        );
    }
    if let Some(exporter) = &config.checks.otlp {
        start(
            "otlp",
            checks::Target::Otlp(exporter.clone()),
            config.probe.attempt_timeout,
            1,
            false,
        );
    }
    (extras, tasks)
}
