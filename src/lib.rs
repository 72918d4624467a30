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
//! - [`server`]: hyper handlers that read the snapshot; no request waits on Redis.
//! - [`logging`]: JSON (`ts`, `level`, `msg`) or text log lines.
//!
//! Data flows one way: config -> probe -> health loop -> (watch, metrics) -> server.

pub mod breaker;
pub mod config;
pub mod health;
pub mod logging;
pub mod metrics;
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
    let metrics = Arc::new(Metrics::new());
    let probe = RedisProbe::new(&config.redis)?;
    let (health_loop, health) = HealthLoop::new(
        probe,
        health::Schedule::from_config(config),
        config.breaker(),
        RandomJitter,
        metrics.clone(),
        config.probe.on_failure,
    );
    let task = tokio::spawn(health_loop.run());
    let state = AppState::new(health, metrics, config.probe.on_failure);
    let draining = state.clone();
    server::serve(listener, state, async move {
        shutdown.await;
        draining.start_draining();
    })
    .await;
    task.abort();
    Ok(())
}
