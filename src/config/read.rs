//! The section readers: each reads its keys through [`Reader`] (so every problem is collected
//! before any section gives up), then checks the keys that depend on each other.

use std::path::PathBuf;

use super::keys::*;
use super::reader::Reader;
use super::{
    AppPool, ChecksConfig, ClientCert, Config, LogConfig, ObserveConfig, PasswordSource,
    ProbeConfig, RedisConfig, TlsConfig, TlsFiles, WarningKind,
};

/// Reads every section; `None` when any key has a problem (the reader holds them all).
pub(super) fn config(r: &mut Reader<'_>) -> Option<Config> {
    let redis = redis(r);
    let listen = r.get(PROBE_LISTEN);
    let probe = probe(r);
    let checks = checks(r);
    let observe = observe(r);
    let log = log(r);
    if let Some(p) = &probe
        && p.attempt_timeout > p.interval * 2
    {
        let message = format!(
            "{} is more than twice {}: a hanging node delays every check",
            PROBE_ATTEMPT_TIMEOUT.env, PROBE_INTERVAL.env
        );
        r.warn(WarningKind::SlowAttempt, message);
    }
    Some(Config {
        redis: redis?,
        probe: probe?,
        observe: observe?,
        checks: checks?,
        listen: listen?,
        log: log?,
        warnings: std::mem::take(&mut r.warnings),
        effective: std::mem::take(&mut r.effective),
    })
}

fn redis(r: &mut Reader<'_>) -> Option<RedisConfig> {
    let addresses = r.require(REDIS_ADDRESS);
    let cluster_mode = r.get(REDIS_CLUSTER_MODE);
    if cluster_mode == Some(false) && addresses.as_ref().is_some_and(|a| a.len() > 1) {
        r.problem(
            REDIS_ADDRESS.info,
            "a list of addresses needs REDIS_CLUSTER_MODE=true; a standalone server has one address",
        );
    }
    let username = r.get(REDIS_USERNAME);
    let password = password(r);
    let tls = tls(r);
    let dial_timeout = r.get(REDIS_DIAL_TIMEOUT);
    let read_timeout = r.get(REDIS_READ_TIMEOUT);
    let write_timeout = r.get(REDIS_WRITE_TIMEOUT);
    let app_pool = app_pool(r);
    let password_from_secrets = r.get(REDIS_PASSWORD_FROM_SECRETS).unwrap_or(false);
    let aws_secret_name = r.get(AWS_SECRET_NAME);
    let max_nodes = r.get(PROBE_MAX_NODES);
    if password_from_secrets && password == Some(PasswordSource::None) {
        let message = format!(
            "{}=true but neither {} nor {} is set: redis-probe does not call a secret store; \
             mount the secret as a file and set {}",
            REDIS_PASSWORD_FROM_SECRETS.env,
            REDIS_PASSWORD.env,
            REDIS_PASSWORD_FILE.env,
            REDIS_PASSWORD_FILE.env
        );
        r.warn(WarningKind::NoSecretStore, message);
    }
    Some(RedisConfig {
        addresses: addresses?,
        cluster_mode: cluster_mode?,
        username,
        password: password?,
        tls,
        dial_timeout: dial_timeout?,
        read_timeout: read_timeout?,
        write_timeout: write_timeout?,
        app_pool,
        password_from_secrets,
        aws_secret_name,
        max_nodes: max_nodes? as usize,
    })
}

fn password(r: &mut Reader<'_>) -> Option<PasswordSource> {
    let inline = r.get(REDIS_PASSWORD);
    let file: Option<PathBuf> = r.get(REDIS_PASSWORD_FILE);
    let file_given = r.figment.contains(REDIS_PASSWORD_FILE.path);
    match (inline, file) {
        (Some(_), _) if file_given => {
            r.problems.push(format!(
                "{} and {} are both set: set only one",
                REDIS_PASSWORD.env, REDIS_PASSWORD_FILE.env
            ));
            None
        }
        (Some(s), _) => Some(PasswordSource::Inline(s)),
        (None, Some(p)) => Some(PasswordSource::File(p)),
        // Given but unreadable: the reader has the problem.
        (None, None) if file_given => None,
        (None, None) => Some(PasswordSource::None),
    }
}

/// The TLS material; `None` when TLS is off (a warning when files are given anyway).
fn tls(r: &mut Reader<'_>) -> Option<TlsConfig> {
    let enabled = r.get(REDIS_TLS_ENABLED);
    let ca = r.get(REDIS_TLS_CA_FILE);
    let cert = r.get(REDIS_TLS_CERT_FILE);
    let key = r.get(REDIS_TLS_KEY_FILE);
    let server_name = r.get(REDIS_TLS_SERVER_NAME);
    let files = TlsFiles {
        ca: ca.as_ref().map(|f| f.path.clone()),
        cert: cert.as_ref().map(|f| f.path.clone()),
        key: key.as_ref().map(|f| f.path.clone()),
    };
    let ca_pem = ca.map(|f| f.pem);
    let client = match (cert, key) {
        (Some(cert), Some(key)) => Some(ClientCert {
            cert_pem: cert.pem,
            key_pem: key.pem,
        }),
        (Some(_), None) => {
            let (a, b) = (REDIS_TLS_CERT_FILE.env, REDIS_TLS_KEY_FILE.env);
            r.problems.push(format!("{a} is set without {b}"));
            None
        }
        (None, Some(_)) => {
            let (a, b) = (REDIS_TLS_KEY_FILE.env, REDIS_TLS_CERT_FILE.env);
            r.problems.push(format!("{a} is set without {b}"));
            None
        }
        (None, None) => None,
    };
    if enabled == Some(true) {
        return Some(TlsConfig {
            ca_pem,
            client,
            server_name,
            files,
        });
    }
    if ca_pem.is_some() || client.is_some() || server_name.is_some() {
        let message = format!(
            "TLS settings are given but {}=false: they are not used",
            REDIS_TLS_ENABLED.env
        );
        r.warn(WarningKind::UnusedTls, message);
    }
    None
}

/// The app's go-redis pool settings: validated, used only for the pod's connection ceiling.
fn app_pool(r: &mut Reader<'_>) -> AppPool {
    AppPool {
        size: r.get(REDIS_POOL_SIZE),
        timeout: r.get(REDIS_POOL_TIMEOUT),
        min_idle_conns: r.get(REDIS_MIN_IDLE_CONNS),
        max_conn_age: r.get(REDIS_MAX_CONN_AGE),
        idle_time: match (r.get(REDIS_CONN_MAX_IDLE_TIME), r.get(REDIS_IDLE_TIMEOUT)) {
            (Some(d), _) => Some(("REDIS_CONN_MAX_IDLE_TIME", d)),
            (None, Some(d)) => Some(("REDIS_IDLE_TIMEOUT", d)),
            (None, None) => None,
        },
        route_by_latency: r.get(REDIS_ROUTE_BY_LATENCY).unwrap_or(false),
        read_only: r.get(REDIS_READ_ONLY).unwrap_or(false),
    }
}

/// The check schedule and the breaker.
fn probe(r: &mut Reader<'_>) -> Option<ProbeConfig> {
    let interval = r.get(PROBE_INTERVAL);
    let jitter = r.get(PROBE_JITTER);
    let attempts = r.get(PROBE_ATTEMPTS);
    let attempt_timeout = r.get(PROBE_ATTEMPT_TIMEOUT);
    let retry_backoff = r.get(PROBE_RETRY_BACKOFF);
    let failure_threshold = r.get(PROBE_FAILURE_THRESHOLD);
    let success_threshold = r.get(PROBE_SUCCESS_THRESHOLD);
    let open_duration = r.get(PROBE_OPEN_DURATION);
    let open_duration_max = r.get(PROBE_OPEN_DURATION_MAX);
    if let (Some(min), Some(max)) = (open_duration, open_duration_max)
        && max < min
    {
        let min = r.describe(PROBE_OPEN_DURATION.info);
        r.problem(
            PROBE_OPEN_DURATION_MAX.info,
            format_args!("must not be less than {min}"),
        );
    }
    let on_failure = r.get(PROBE_ON_FAILURE);
    Some(ProbeConfig {
        interval: interval?,
        jitter: jitter?,
        attempts: attempts?,
        attempt_timeout: attempt_timeout?,
        retry_backoff: retry_backoff?,
        failure_threshold: failure_threshold?,
        success_threshold: success_threshold?,
        open_duration: open_duration?,
        open_duration_max: open_duration_max?,
        on_failure: on_failure?,
    })
}

/// The server-side view (cluster keys) and the pod's own connections (pool keys).
fn observe(r: &mut Reader<'_>) -> Option<ObserveConfig> {
    let info_interval = r.get(PROBE_INFO_INTERVAL);
    let maxclients = r.get(PROBE_MAXCLIENTS);
    let expected_shards = r.get(PROBE_EXPECTED_SHARDS);
    let pool_interval = r.get(PROBE_POOL_INTERVAL);
    let pool_max_conns = r.get(PROBE_POOL_MAX_CONNS);
    let idle_canary = r.get(PROBE_IDLE_CANARY);
    Some(ObserveConfig {
        info_interval: info_interval?,
        idle_canary: idle_canary?,
        maxclients: u64::from(maxclients?),
        expected_shards,
        pool_interval: pool_interval?,
        pool_max_conns,
    })
}

/// The checks beside Redis: the app's readiness (upstream keys) and the OTLP collector.
fn checks(r: &mut Reader<'_>) -> Option<ChecksConfig> {
    let upstream = r.get(PROBE_UPSTREAM_READYZ);
    let upstream_timeout = r.get(PROBE_UPSTREAM_TIMEOUT);
    let upstream_failure_threshold = r.get(PROBE_UPSTREAM_FAILURE_THRESHOLD);
    let endpoint = r.get(OTEL_EXPORTER_OTLP_ENDPOINT);
    let metrics_endpoint = r.get(OTEL_EXPORTER_OTLP_METRICS_ENDPOINT);
    let protocol = r.get(OTEL_EXPORTER_OTLP_PROTOCOL);
    let metrics_protocol = r.get(OTEL_EXPORTER_OTLP_METRICS_PROTOCOL);
    let otlp_check = r.get(PROBE_OTLP_CHECK);
    let (otlp, otlp_lints) = crate::otlp::exporter(&crate::otlp::Variables {
        endpoint: endpoint.as_deref(),
        metrics_endpoint: metrics_endpoint.as_deref(),
        protocol: protocol.as_deref(),
        metrics_protocol: metrics_protocol.as_deref(),
    });
    for lint in &otlp_lints {
        r.warn(WarningKind::Otlp(lint.kind), format!("OTLP: {lint}"));
    }
    Some(ChecksConfig {
        upstream,
        upstream_timeout: upstream_timeout?,
        upstream_failure_threshold: upstream_failure_threshold?,
        otlp: if otlp_check? { otlp.clone() } else { None },
        otlp_exporter: otlp,
        otlp_lints,
    })
}

fn log(r: &mut Reader<'_>) -> Option<LogConfig> {
    let format = r.get(PROBE_LOG_FORMAT);
    let level = r.get(PROBE_LOG_LEVEL);
    Some(LogConfig {
        format: format?,
        level: level?,
    })
}
