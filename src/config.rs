//! Configuration: built-in defaults < optional TOML file < environment, into one validated
//! [`Config`].
//!
//! The environment uses the names of the application's own deployment (`REDIS_ADDRESS`,
//! `REDIS_TLS_ENABLED`, `REDIS_POOL_SIZE`, ...) so the sidecar can share the app's ConfigMap.
//! Every key lives in one table, [`KEYS`], with its environment name, its TOML path and its
//! default; the README's configuration table mirrors it.
//!
//! Two rules keep start-up errors useful and secrets safe:
//! - Only the variables in [`KEYS`] are read. Kubernetes injects service-link variables such as
//!   `REDIS_PORT=tcp://10.0.0.1:6379` for a Service named `redis`; they are ignored.
//! - Environment values enter figment as raw strings and are converted per key, so a password
//!   of `123456` stays a string and `007` is not turned into 7. A bad value is reported as
//!   `NAME=value: expected ...`, every problem at once, and a secret's value is never printed.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;

/// The variable naming the optional TOML file (also `--config FILE`).
pub const ENV_CONFIG_FILE: &str = "PROBE_CONFIG";

/// One configuration key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// Environment variable name.
    pub env: &'static str,
    /// Dotted path in the TOML file.
    pub path: &'static str,
    /// Built-in default, as it would be written in the environment; `None` for no default.
    pub default: Option<&'static str>,
    /// Never printed.
    pub secret: bool,
}

const fn key(env: &'static str, path: &'static str, default: Option<&'static str>) -> Key {
    Key {
        env,
        path,
        default,
        secret: false,
    }
}

pub const REDIS_ADDRESS: Key = key("REDIS_ADDRESS", "redis.address", None);
pub const REDIS_CLUSTER_MODE: Key = key("REDIS_CLUSTER_MODE", "redis.cluster_mode", Some("true"));
pub const REDIS_USERNAME: Key = key("REDIS_USERNAME", "redis.username", None);
pub const REDIS_PASSWORD: Key = Key {
    env: "REDIS_PASSWORD",
    path: "redis.password",
    default: None,
    secret: true,
};
pub const REDIS_PASSWORD_FILE: Key = key("REDIS_PASSWORD_FILE", "redis.password_file", None);
pub const REDIS_DIAL_TIMEOUT: Key = key("REDIS_DIAL_TIMEOUT", "redis.dial_timeout", Some("5s"));
pub const REDIS_READ_TIMEOUT: Key = key("REDIS_READ_TIMEOUT", "redis.read_timeout", Some("3s"));
pub const REDIS_WRITE_TIMEOUT: Key = key("REDIS_WRITE_TIMEOUT", "redis.write_timeout", Some("3s"));
pub const REDIS_POOL_SIZE: Key = key("REDIS_POOL_SIZE", "redis.pool_size", None);
pub const REDIS_POOL_TIMEOUT: Key = key("REDIS_POOL_TIMEOUT", "redis.pool_timeout", None);
pub const REDIS_MIN_IDLE_CONNS: Key = key("REDIS_MIN_IDLE_CONNS", "redis.min_idle_conns", None);
pub const REDIS_MAX_CONN_AGE: Key = key("REDIS_MAX_CONN_AGE", "redis.max_conn_age", None);
pub const REDIS_ROUTE_BY_LATENCY: Key = key(
    "REDIS_ROUTE_BY_LATENCY",
    "redis.route_by_latency",
    Some("false"),
);
pub const REDIS_READ_ONLY: Key = key("REDIS_READ_ONLY", "redis.read_only", Some("false"));
pub const REDIS_PASSWORD_FROM_SECRETS: Key = key(
    "REDIS_PASSWORD_FROM_SECRETS",
    "redis.password_from_secrets",
    Some("false"),
);
pub const AWS_SECRET_NAME: Key = key("AWS_SECRET_NAME", "redis.aws_secret_name", None);
pub const REDIS_TLS_ENABLED: Key = key("REDIS_TLS_ENABLED", "redis.tls.enabled", Some("false"));
pub const REDIS_TLS_CA_FILE: Key = key("REDIS_TLS_CA_FILE", "redis.tls.ca_file", None);
pub const REDIS_TLS_CERT_FILE: Key = key("REDIS_TLS_CERT_FILE", "redis.tls.cert_file", None);
pub const REDIS_TLS_KEY_FILE: Key = key("REDIS_TLS_KEY_FILE", "redis.tls.key_file", None);
pub const REDIS_TLS_SERVER_NAME: Key = key("REDIS_TLS_SERVER_NAME", "redis.tls.server_name", None);
pub const PROBE_LISTEN: Key = key("PROBE_LISTEN", "server.listen", Some("0.0.0.0:8081"));
pub const PROBE_INTERVAL: Key = key("PROBE_INTERVAL", "probe.interval", Some("5s"));
pub const PROBE_JITTER: Key = key("PROBE_JITTER", "probe.jitter", Some("0.2"));
pub const PROBE_ATTEMPTS: Key = key("PROBE_ATTEMPTS", "probe.attempts", Some("3"));
pub const PROBE_ATTEMPT_TIMEOUT: Key =
    key("PROBE_ATTEMPT_TIMEOUT", "probe.attempt_timeout", Some("2s"));
pub const PROBE_RETRY_BACKOFF: Key =
    key("PROBE_RETRY_BACKOFF", "probe.retry_backoff", Some("500ms"));
pub const PROBE_FAILURE_THRESHOLD: Key = key(
    "PROBE_FAILURE_THRESHOLD",
    "probe.failure_threshold",
    Some("3"),
);
pub const PROBE_SUCCESS_THRESHOLD: Key = key(
    "PROBE_SUCCESS_THRESHOLD",
    "probe.success_threshold",
    Some("1"),
);
pub const PROBE_OPEN_DURATION: Key = key("PROBE_OPEN_DURATION", "probe.open_duration", Some("5s"));
pub const PROBE_OPEN_DURATION_MAX: Key = key(
    "PROBE_OPEN_DURATION_MAX",
    "probe.open_duration_max",
    Some("30s"),
);
pub const PROBE_ON_FAILURE: Key = key("PROBE_ON_FAILURE", "probe.on_failure", Some("unready"));
pub const PROBE_INFO_INTERVAL: Key =
    key("PROBE_INFO_INTERVAL", "cluster.info_interval", Some("30s"));
pub const PROBE_MAXCLIENTS: Key = key("PROBE_MAXCLIENTS", "cluster.maxclients", Some("65000"));
pub const PROBE_EXPECTED_SHARDS: Key =
    key("PROBE_EXPECTED_SHARDS", "cluster.expected_shards", None);
pub const PROBE_POOL_INTERVAL: Key = key("PROBE_POOL_INTERVAL", "pool.interval", Some("15s"));
pub const PROBE_POOL_MAX_CONNS: Key = key("PROBE_POOL_MAX_CONNS", "pool.max_conns", None);
pub const PROBE_UPSTREAM_READYZ: Key = key("PROBE_UPSTREAM_READYZ", "upstream.readyz", None);
pub const PROBE_UPSTREAM_TIMEOUT: Key =
    key("PROBE_UPSTREAM_TIMEOUT", "upstream.timeout", Some("1s"));
pub const PROBE_UPSTREAM_FAILURE_THRESHOLD: Key = key(
    "PROBE_UPSTREAM_FAILURE_THRESHOLD",
    "upstream.failure_threshold",
    Some("3"),
);
pub const OTEL_EXPORTER_OTLP_ENDPOINT: Key =
    key("OTEL_EXPORTER_OTLP_ENDPOINT", "otlp.endpoint", None);
pub const OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: Key = key(
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "otlp.metrics_endpoint",
    None,
);
pub const OTEL_EXPORTER_OTLP_PROTOCOL: Key =
    key("OTEL_EXPORTER_OTLP_PROTOCOL", "otlp.protocol", None);
pub const OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: Key = key(
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    "otlp.metrics_protocol",
    None,
);
pub const PROBE_OTLP_CHECK: Key = key("PROBE_OTLP_CHECK", "otlp.check", Some("true"));
pub const PROBE_LOG_FORMAT: Key = key("PROBE_LOG_FORMAT", "log.format", Some("json"));
pub const PROBE_LOG_LEVEL: Key = key("PROBE_LOG_LEVEL", "log.level", Some("info"));

/// Every key, in the order `--check-config` prints them.
pub const KEYS: &[Key] = &[
    REDIS_ADDRESS,
    REDIS_CLUSTER_MODE,
    REDIS_USERNAME,
    REDIS_PASSWORD,
    REDIS_PASSWORD_FILE,
    REDIS_TLS_ENABLED,
    REDIS_TLS_CA_FILE,
    REDIS_TLS_CERT_FILE,
    REDIS_TLS_KEY_FILE,
    REDIS_TLS_SERVER_NAME,
    REDIS_DIAL_TIMEOUT,
    REDIS_READ_TIMEOUT,
    REDIS_WRITE_TIMEOUT,
    REDIS_POOL_SIZE,
    REDIS_POOL_TIMEOUT,
    REDIS_MIN_IDLE_CONNS,
    REDIS_MAX_CONN_AGE,
    REDIS_ROUTE_BY_LATENCY,
    REDIS_READ_ONLY,
    REDIS_PASSWORD_FROM_SECRETS,
    AWS_SECRET_NAME,
    PROBE_LISTEN,
    PROBE_INTERVAL,
    PROBE_JITTER,
    PROBE_ATTEMPTS,
    PROBE_ATTEMPT_TIMEOUT,
    PROBE_RETRY_BACKOFF,
    PROBE_FAILURE_THRESHOLD,
    PROBE_SUCCESS_THRESHOLD,
    PROBE_OPEN_DURATION,
    PROBE_OPEN_DURATION_MAX,
    PROBE_ON_FAILURE,
    PROBE_INFO_INTERVAL,
    PROBE_MAXCLIENTS,
    PROBE_EXPECTED_SHARDS,
    PROBE_POOL_INTERVAL,
    PROBE_POOL_MAX_CONNS,
    PROBE_UPSTREAM_READYZ,
    PROBE_UPSTREAM_TIMEOUT,
    PROBE_UPSTREAM_FAILURE_THRESHOLD,
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_METRICS_PROTOCOL,
    PROBE_OTLP_CHECK,
    PROBE_LOG_FORMAT,
    PROBE_LOG_LEVEL,
];

/// A string that is never printed: `Debug` and `Display` show `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself; call only where it is handed to Redis.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where the AUTH password comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    None,
    Inline(Secret),
    /// Read at start and again whenever AUTH fails, so a rotated token is picked up.
    File(PathBuf),
}

/// Reads a password file: the whole file, without one trailing newline.
pub fn read_password_file(path: &Path) -> std::io::Result<Secret> {
    let raw = std::fs::read_to_string(path)?;
    let s = raw.strip_suffix('\n').unwrap_or(&raw);
    let s = s.strip_suffix('\r').unwrap_or(s);
    Ok(Secret::new(s))
}

/// A `host:port` pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for HostPort {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (host, port) = s.rsplit_once(':').ok_or("expected host:port")?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err("expected host:port");
        }
        let port: u16 = port
            .parse()
            .map_err(|_| "expected a port number from 1 to 65535")?;
        if port == 0 {
            return Err("expected a port number from 1 to 65535");
        }
        Ok(HostPort {
            host: host.to_string(),
            port,
        })
    }
}

/// TLS material, loaded and checked at start-up.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM bytes of the CA bundle; `None` means the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM bytes of the client certificate chain and key, for mutual TLS.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
    /// Name verified in every node's certificate instead of the address it is reached by.
    pub server_name: Option<String>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("custom_ca", &self.ca_pem.is_some())
            .field("client_cert", &self.client.is_some())
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// The go-redis pool settings of the application. redis-probe keeps one connection per node and
/// does not use them for itself; they describe the application's connection budget.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AppPool {
    pub size: Option<u32>,
    pub timeout: Option<Duration>,
    pub min_idle_conns: Option<u32>,
    pub max_conn_age: Option<Duration>,
    pub route_by_latency: bool,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub addresses: Vec<HostPort>,
    pub cluster_mode: bool,
    pub username: Option<String>,
    pub password: PasswordSource,
    pub tls: Option<TlsConfig>,
    pub dial_timeout: Duration,
    pub read_timeout: Duration,
    /// Accepted for compatibility with the app's settings; redis-rs has no write timeout, and
    /// every probe command is bounded by the attempt timeout instead.
    pub write_timeout: Duration,
    pub app_pool: AppPool,
    pub password_from_secrets: bool,
    pub aws_secret_name: Option<String>,
}

/// What `/readyz` says when Redis is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// 503: the pod leaves the Service's endpoints.
    Unready,
    /// 200 with "degraded": for services that must keep serving when the shared Redis fails.
    Degraded,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConfig {
    pub interval: Duration,
    pub jitter: f64,
    pub attempts: u32,
    pub attempt_timeout: Duration,
    pub retry_backoff: Duration,
    pub failure_threshold: u32,
    pub success_threshold: u32,
    pub open_duration: Duration,
    pub open_duration_max: Duration,
    pub on_failure: OnFailure,
}

/// The server-side view (INFO, CLUSTER INFO) and the pod's own connection count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObserveConfig {
    /// How often INFO and CLUSTER INFO are read (slower than PING: they are bigger replies).
    pub info_interval: Duration,
    /// maxclients to assume when the server does not tell (ElastiCache disables CONFIG).
    pub maxclients: u64,
    /// Shards the cluster should have, for drift alerts.
    pub expected_shards: Option<u32>,
    /// How often the pod's sockets are counted from /proc/net/tcp.
    pub pool_interval: Duration,
    /// Overrides the computed pool ceiling of the pod.
    pub pool_max_conns: Option<u32>,
}

/// Checks beside Redis: the app's own readiness (gating) and the OTLP collector (not gating).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChecksConfig {
    /// `http://host:port/path` of the app's readiness endpoint.
    pub upstream: Option<hyper::Uri>,
    pub upstream_timeout: Duration,
    /// Failed polls in a row before the app counts as not ready.
    pub upstream_failure_threshold: u32,
    /// The metrics exporter the app is configured with, when it has one and the check is on.
    pub otlp: Option<crate::otlp::Exporter>,
    /// What the lint found in the OTEL variables (also in `warnings`).
    pub otlp_findings: Vec<crate::otlp::Finding>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub redis: RedisConfig,
    pub probe: ProbeConfig,
    pub observe: ObserveConfig,
    pub checks: ChecksConfig,
    pub listen: SocketAddr,
    pub log: LogConfig,
    /// Settings that are valid but probably not what was meant; logged at start.
    pub warnings: Vec<String>,
    /// Each key's effective value as text (secrets redacted), for `--check-config`.
    pub effective: Vec<(Key, String, &'static str)>,
}

/// Every problem found, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

/// The environment restricted to [`KEYS`], as a figment provider of raw strings.
#[derive(Debug, Clone, Default)]
pub struct EnvVars(BTreeMap<String, String>);

impl EnvVars {
    /// The process environment.
    pub fn from_process() -> Self {
        Self::from_iter(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for EnvVars {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

const ENV_SOURCE: &str = "environment";
const DEFAULT_SOURCE: &str = "built-in default";

impl Provider for EnvVars {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_SOURCE)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let pairs = KEYS.iter().filter_map(|k| {
            // An empty value, common in shared ConfigMaps, means "not set".
            let v = self.get(k.env).filter(|v| !v.is_empty())?;
            Some((k.path, v.to_string()))
        });
        Ok(Profile::Default.collect(nest_all(pairs)))
    }
}

struct Defaults;

impl Provider for Defaults {
    fn metadata(&self) -> Metadata {
        Metadata::named(DEFAULT_SOURCE)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let pairs = KEYS
            .iter()
            .filter_map(|k| Some((k.path, k.default?.to_string())));
        Ok(Profile::Default.collect(nest_all(pairs)))
    }
}

/// Turns `("redis.tls.enabled", "true")` pairs into nested dictionaries.
fn nest_all(pairs: impl Iterator<Item = (&'static str, String)>) -> Dict {
    let mut root = Dict::new();
    for (path, v) in pairs {
        let mut dict = &mut root;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                dict.insert(part.to_string(), Value::from(v));
                break;
            }
            let entry = dict
                .entry(part.to_string())
                .or_insert_with(|| Value::from(Dict::new()));
            let Value::Dict(_, inner) = entry else {
                unreachable!("keys never nest under a value")
            };
            dict = inner;
        }
    }
    root
}

/// A value type a key can hold, with the words used when a value does not parse.
trait FieldType: DeserializeOwned {
    const EXPECTED: &'static str;
}

impl FieldType for u32 {
    const EXPECTED: &'static str = "an unsigned integer";
}
impl FieldType for bool {
    const EXPECTED: &'static str = "true or false";
}
/// A number from a string or a TOML number. Parsed from the string itself: figment's lossy
/// conversion goes through `f32` and turns 0.2 into 0.20000000298.
struct Float(f64);

impl<'de> serde::Deserialize<'de> for Float {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Float;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Float, E> {
                s.trim()
                    .parse()
                    .map(Float)
                    .map_err(|_| E::custom("not a number"))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Float, E> {
                Ok(Float(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Float, E> {
                Ok(Float(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Float, E> {
                Ok(Float(v as f64))
            }
        }
        d.deserialize_any(V)
    }
}

impl FieldType for Float {
    const EXPECTED: &'static str = "a number";
}
impl FieldType for String {
    const EXPECTED: &'static str = "a string";
}

/// A duration written like `500ms`, `10s` or `30m`.
#[derive(serde::Deserialize)]
#[serde(transparent)]
struct Dur(#[serde(with = "humantime_serde")] Duration);

impl FieldType for Dur {
    const EXPECTED: &'static str = "a duration such as 500ms, 10s or 30m";
}

/// Collects values and problems while reading keys one by one, so every problem is reported.
struct Reader<'a> {
    figment: Figment,
    env: &'a EnvVars,
    file: Option<PathBuf>,
    problems: Vec<String>,
    effective: Vec<(Key, String, &'static str)>,
}

impl Reader<'_> {
    /// Where `key`'s value came from, and that value, written for a person.
    fn describe(&self, key: Key) -> String {
        let value = |v: &str| {
            if key.secret {
                "<redacted>".to_string()
            } else {
                shown(v)
            }
        };
        match self.source(key) {
            ENV_SOURCE => format!("{}={}", key.env, value(self.env.get(key.env).unwrap_or(""))),
            DEFAULT_SOURCE => format!("{}={} (default)", key.env, value(key.default.unwrap_or(""))),
            _ => {
                let v = self
                    .figment
                    .find_value(key.path)
                    .ok()
                    .map(|v| {
                        if key.secret {
                            "<redacted>".into()
                        } else {
                            toml_text(&v)
                        }
                    })
                    .unwrap_or_default();
                let file = self
                    .file
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                format!("{} = {} in {}", key.path, v, file)
            }
        }
    }

    fn source(&self, key: Key) -> &'static str {
        match self
            .figment
            .find_metadata(key.path)
            .map(|m| m.name.as_ref())
        {
            Some(ENV_SOURCE) => ENV_SOURCE,
            Some(DEFAULT_SOURCE) => DEFAULT_SOURCE,
            _ => "file",
        }
    }

    fn problem(&mut self, key: Key, what: impl fmt::Display) {
        let p = format!("{}: {}", self.describe(key), what);
        self.problems.push(p);
    }

    fn get<T: FieldType>(&mut self, key: Key) -> Option<T> {
        if !self.figment.contains(key.path) {
            return None;
        }
        match self.figment.extract_inner_lossy::<T>(key.path) {
            Ok(v) => {
                let shown = if key.secret {
                    "<redacted>".to_string()
                } else {
                    self.figment
                        .find_value(key.path)
                        .map(|v| plain_text(&v))
                        .unwrap_or_default()
                };
                self.effective.push((key, shown, self.source(key)));
                Some(v)
            }
            Err(e) => {
                // A file that does not parse fails every key the same way: report it once.
                if e.path.is_empty() {
                    let msg = e.to_string();
                    if !self.problems.contains(&msg) {
                        self.problems.push(msg);
                    }
                } else {
                    self.problem(key, format_args!("expected {}", T::EXPECTED));
                }
                None
            }
        }
    }

    fn require<T: FieldType>(&mut self, key: Key) -> Option<T> {
        let v = self.get(key);
        if v.is_none() && !self.figment.contains(key.path) {
            self.problems.push(format!(
                "{} is required (or {} in the config file)",
                key.env, key.path
            ));
        }
        v
    }

    fn duration(&mut self, key: Key) -> Option<Duration> {
        self.get::<Dur>(key).map(|d| d.0)
    }

    /// A duration that must be more than zero.
    fn positive_duration(&mut self, key: Key) -> Option<Duration> {
        let d = self.duration(key)?;
        if d.is_zero() {
            self.problem(key, "must be more than 0");
            return None;
        }
        Some(d)
    }

    /// A count that must be at least 1.
    fn count(&mut self, key: Key) -> Option<u32> {
        let n = self.get::<u32>(key)?;
        if n == 0 {
            self.problem(key, "must be at least 1");
            return None;
        }
        Some(n)
    }

    fn file(&mut self, key: Key) -> Option<(PathBuf, Vec<u8>)> {
        let path = PathBuf::from(self.get::<String>(key)?);
        match std::fs::read(&path) {
            Ok(bytes) => Some((path, bytes)),
            Err(e) => {
                self.problem(key, format_args!("cannot read the file: {e}"));
                None
            }
        }
    }
}

/// A value as a person would type it in the environment.
fn shown(v: &str) -> String {
    if v.is_empty() || v.contains(char::is_whitespace) {
        format!("{v:?}")
    } else {
        v.to_string()
    }
}

fn plain_text(v: &Value) -> String {
    match v {
        Value::String(_, s) => s.clone(),
        other => toml_text(other),
    }
}

fn toml_text(v: &Value) -> String {
    match v {
        Value::String(_, s) => format!("{s:?}"),
        Value::Char(_, c) => format!("{c:?}"),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, n) => n
            .to_u128()
            .map(|u| u.to_string())
            .or_else(|| n.to_i128().map(|i| i.to_string()))
            .or_else(|| n.to_f64().map(|f| f.to_string()))
            .unwrap_or_default(),
        Value::Empty(..) => "null".into(),
        Value::Dict(..) => "a table".into(),
        Value::Array(..) => "an array".into(),
    }
}

// === impl Config ===

impl Config {
    /// Loads the configuration from the process environment and the TOML file named by `file`
    /// (the `--config` argument) or by `PROBE_CONFIG`.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::from_sources(&EnvVars::from_process(), file)
    }

    /// Loads from explicit sources; tests use this instead of touching the process environment.
    pub fn from_sources(env: &EnvVars, file: Option<&Path>) -> Result<Config, ConfigError> {
        let file = file.map(Path::to_path_buf).or_else(|| {
            env.get(ENV_CONFIG_FILE)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        });
        let mut figment = Figment::from(Defaults);
        if let Some(path) = &file {
            if !path.is_file() {
                return Err(ConfigError {
                    problems: vec![format!("config file {}: no such file", path.display())],
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let figment = figment.merge(env.clone());
        let mut r = Reader {
            figment,
            env,
            file,
            problems: vec![],
            effective: vec![],
        };
        let config = read(&mut r);
        match config {
            Some(c) if r.problems.is_empty() => Ok(c),
            _ => Err(ConfigError {
                problems: r.problems,
            }),
        }
    }

    /// The configuration as `NAME=value` lines, secrets redacted, each with its source.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let width = self
            .effective
            .iter()
            .map(|(k, v, _)| k.env.len() + v.len() + 1)
            .max()
            .unwrap_or(0);
        for (k, v, source) in &self.effective {
            let kv = format!("{}={}", k.env, shown(v));
            out.push_str(&format!("{kv:<width$}  # {}, {}\n", k.path, source));
        }
        for w in &self.warnings {
            out.push_str(&format!("# warning: {w}\n"));
        }
        out
    }

    /// Breaker settings derived from the probe configuration.
    pub fn breaker(&self) -> crate::breaker::Settings {
        crate::breaker::Settings {
            failure_threshold: self.probe.failure_threshold,
            success_threshold: self.probe.success_threshold,
            open_duration: self.probe.open_duration,
            open_duration_max: self.probe.open_duration_max,
            jitter: self.probe.jitter,
        }
    }
}

fn read(r: &mut Reader<'_>) -> Option<Config> {
    let mut warnings = vec![];

    let addresses = r.require::<String>(REDIS_ADDRESS).and_then(|s| {
        let parsed: Result<Vec<HostPort>, _> = s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(str::parse)
            .collect();
        match parsed {
            Ok(v) if !v.is_empty() => Some(v),
            Ok(_) => {
                r.problem(REDIS_ADDRESS, "expected host:port");
                None
            }
            Err(e) => {
                r.problem(REDIS_ADDRESS, e);
                None
            }
        }
    });
    let cluster_mode = r.get::<bool>(REDIS_CLUSTER_MODE);
    if cluster_mode == Some(false) && addresses.as_ref().is_some_and(|a| a.len() > 1) {
        r.problem(REDIS_ADDRESS, "a list of addresses needs REDIS_CLUSTER_MODE=true; a standalone server has one address");
    }
    let username = r.get::<String>(REDIS_USERNAME);
    let inline = r.get::<String>(REDIS_PASSWORD).map(Secret::new);
    let password_file = r.get::<String>(REDIS_PASSWORD_FILE).map(PathBuf::from);
    let password = match (inline, password_file) {
        (Some(_), Some(_)) => {
            r.problems.push(format!(
                "{} and {} are both set: set only one",
                REDIS_PASSWORD.env, REDIS_PASSWORD_FILE.env
            ));
            None
        }
        (Some(s), None) => Some(PasswordSource::Inline(s)),
        (None, Some(p)) => match read_password_file(&p) {
            Ok(_) => Some(PasswordSource::File(p)),
            Err(e) => {
                r.problem(
                    REDIS_PASSWORD_FILE,
                    format_args!("cannot read the file: {e}"),
                );
                None
            }
        },
        (None, None) => Some(PasswordSource::None),
    };

    let tls_enabled = r.get::<bool>(REDIS_TLS_ENABLED);
    let ca = r.file(REDIS_TLS_CA_FILE);
    let cert = r.file(REDIS_TLS_CERT_FILE);
    let key = r.file(REDIS_TLS_KEY_FILE);
    let server_name = r.get::<String>(REDIS_TLS_SERVER_NAME);
    if let Some((_, pem)) = &ca
        && CertificateDer::pem_slice_iter(pem)
            .filter(Result::is_ok)
            .count()
            == 0
    {
        r.problem(REDIS_TLS_CA_FILE, "holds no PEM certificate");
    }
    if let Some((_, pem)) = &cert
        && CertificateDer::pem_slice_iter(pem)
            .filter(Result::is_ok)
            .count()
            == 0
    {
        r.problem(REDIS_TLS_CERT_FILE, "holds no PEM certificate");
    }
    if let Some((_, pem)) = &key
        && PrivateKeyDer::from_pem_slice(pem).is_err()
    {
        r.problem(REDIS_TLS_KEY_FILE, "holds no PEM private key");
    }
    if let Some(name) = &server_name
        && rustls::pki_types::ServerName::try_from(name.as_str()).is_err()
    {
        r.problem(
            REDIS_TLS_SERVER_NAME,
            "expected a DNS name or an IP address",
        );
    }
    let client = match (cert, key) {
        (Some((_, c)), Some((_, k))) => Some((c, k)),
        (Some(_), None) => {
            r.problems.push(format!(
                "{} is set without {}",
                REDIS_TLS_CERT_FILE.env, REDIS_TLS_KEY_FILE.env
            ));
            None
        }
        (None, Some(_)) => {
            r.problems.push(format!(
                "{} is set without {}",
                REDIS_TLS_KEY_FILE.env, REDIS_TLS_CERT_FILE.env
            ));
            None
        }
        (None, None) => None,
    };
    let tls = match tls_enabled {
        Some(true) => Some(TlsConfig {
            ca_pem: ca.map(|(_, pem)| pem),
            client,
            server_name,
        }),
        _ => {
            if ca.is_some() || client.is_some() || server_name.is_some() {
                warnings.push(format!(
                    "TLS settings are given but {}=false: they are not used",
                    REDIS_TLS_ENABLED.env
                ));
            }
            None
        }
    };

    let dial_timeout = r.positive_duration(REDIS_DIAL_TIMEOUT);
    let read_timeout = r.positive_duration(REDIS_READ_TIMEOUT);
    let write_timeout = r.positive_duration(REDIS_WRITE_TIMEOUT);
    let app_pool = AppPool {
        size: r.get::<u32>(REDIS_POOL_SIZE),
        timeout: r.duration(REDIS_POOL_TIMEOUT),
        min_idle_conns: r.get::<u32>(REDIS_MIN_IDLE_CONNS),
        max_conn_age: r.duration(REDIS_MAX_CONN_AGE),
        route_by_latency: r.get::<bool>(REDIS_ROUTE_BY_LATENCY).unwrap_or(false),
        read_only: r.get::<bool>(REDIS_READ_ONLY).unwrap_or(false),
    };
    let password_from_secrets = r.get::<bool>(REDIS_PASSWORD_FROM_SECRETS).unwrap_or(false);
    let aws_secret_name = r.get::<String>(AWS_SECRET_NAME);
    if password_from_secrets && password == Some(PasswordSource::None) {
        warnings.push(format!(
            "{}=true but neither {} nor {} is set: redis-probe does not call a secret store; \
             mount the secret as a file and set {}",
            REDIS_PASSWORD_FROM_SECRETS.env,
            REDIS_PASSWORD.env,
            REDIS_PASSWORD_FILE.env,
            REDIS_PASSWORD_FILE.env
        ));
    }

    let listen = r
        .get::<String>(PROBE_LISTEN)
        .and_then(|s| match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                r.problem(PROBE_LISTEN, "expected an address such as 0.0.0.0:8081");
                None
            }
        });
    let interval = r.positive_duration(PROBE_INTERVAL);
    let jitter = r.get::<Float>(PROBE_JITTER).and_then(|Float(j)| {
        if (0.0..1.0).contains(&j) {
            Some(j)
        } else {
            r.problem(PROBE_JITTER, "must be at least 0 and less than 1");
            None
        }
    });
    let attempts = r.count(PROBE_ATTEMPTS);
    let attempt_timeout = r.positive_duration(PROBE_ATTEMPT_TIMEOUT);
    let retry_backoff = r.positive_duration(PROBE_RETRY_BACKOFF);
    let failure_threshold = r.count(PROBE_FAILURE_THRESHOLD);
    let success_threshold = r.count(PROBE_SUCCESS_THRESHOLD);
    let open_duration = r.positive_duration(PROBE_OPEN_DURATION);
    let open_duration_max = r.positive_duration(PROBE_OPEN_DURATION_MAX);
    if let (Some(min), Some(max)) = (open_duration, open_duration_max)
        && max < min
    {
        r.problem(
            PROBE_OPEN_DURATION_MAX,
            format_args!("must not be less than {}", r.describe(PROBE_OPEN_DURATION)),
        );
    }
    let on_failure = r
        .get::<String>(PROBE_ON_FAILURE)
        .and_then(|s| match s.as_str() {
            "unready" => Some(OnFailure::Unready),
            "degraded" => Some(OnFailure::Degraded),
            _ => {
                r.problem(PROBE_ON_FAILURE, "expected unready or degraded");
                None
            }
        });
    let upstream =
        r.get::<String>(PROBE_UPSTREAM_READYZ)
            .and_then(|s| match s.parse::<hyper::Uri>() {
                Ok(u) if u.scheme_str() == Some("http") && u.host().is_some() => Some(u),
                Ok(u) if u.scheme_str() == Some("https") => {
                    r.problem(
                        PROBE_UPSTREAM_READYZ,
                        "expected an http:// URL (the app is in the same pod; https is not needed)",
                    );
                    None
                }
                _ => {
                    r.problem(
                        PROBE_UPSTREAM_READYZ,
                        "expected a URL such as http://127.0.0.1:8000/readyz",
                    );
                    None
                }
            });
    let upstream_given = r.figment.contains(PROBE_UPSTREAM_READYZ.path);
    let upstream_timeout = r.positive_duration(PROBE_UPSTREAM_TIMEOUT);
    let upstream_failure_threshold = r.count(PROBE_UPSTREAM_FAILURE_THRESHOLD);
    let otel_endpoint = r.get::<String>(OTEL_EXPORTER_OTLP_ENDPOINT);
    let otel_metrics_endpoint = r.get::<String>(OTEL_EXPORTER_OTLP_METRICS_ENDPOINT);
    let otel_protocol = r.get::<String>(OTEL_EXPORTER_OTLP_PROTOCOL);
    let otel_metrics_protocol = r.get::<String>(OTEL_EXPORTER_OTLP_METRICS_PROTOCOL);
    let otlp_check = r.get::<bool>(PROBE_OTLP_CHECK);
    let (otlp, otlp_findings) = crate::otlp::exporter(
        otel_endpoint.as_deref(),
        otel_metrics_endpoint.as_deref(),
        otel_protocol.as_deref(),
        otel_metrics_protocol.as_deref(),
    );
    warnings.extend(otlp_findings.iter().map(|f| format!("OTLP: {f}")));
    let info_interval = r.positive_duration(PROBE_INFO_INTERVAL);
    let maxclients = r.count(PROBE_MAXCLIENTS);
    let expected_shards = r.get::<u32>(PROBE_EXPECTED_SHARDS);
    let pool_interval = r.positive_duration(PROBE_POOL_INTERVAL);
    let pool_max_conns = r.get::<u32>(PROBE_POOL_MAX_CONNS);
    let format = r
        .get::<String>(PROBE_LOG_FORMAT)
        .and_then(|s| match s.as_str() {
            "json" => Some(LogFormat::Json),
            "text" => Some(LogFormat::Text),
            _ => {
                r.problem(PROBE_LOG_FORMAT, "expected json or text");
                None
            }
        });
    let level =
        r.get::<String>(PROBE_LOG_LEVEL).and_then(
            |s| match tracing_subscriber::EnvFilter::builder().parse(&s) {
                Ok(_) => Some(s),
                Err(_) => {
                    r.problem(
                        PROBE_LOG_LEVEL,
                        "expected a level (error, warn, info, debug, trace) or a filter",
                    );
                    None
                }
            },
        );
    if let (Some(t), Some(i)) = (attempt_timeout, interval)
        && t > i * 2
    {
        warnings.push(format!(
            "{} is more than twice {}: a hanging node delays every check",
            PROBE_ATTEMPT_TIMEOUT.env, PROBE_INTERVAL.env
        ));
    }

    Some(Config {
        redis: RedisConfig {
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
        },
        probe: ProbeConfig {
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
        },
        observe: ObserveConfig {
            info_interval: info_interval?,
            maxclients: u64::from(maxclients?),
            expected_shards,
            pool_interval: pool_interval?,
            pool_max_conns,
        },
        checks: ChecksConfig {
            upstream: if upstream_given {
                Some(upstream?)
            } else {
                None
            },
            upstream_timeout: upstream_timeout?,
            upstream_failure_threshold: upstream_failure_threshold?,
            otlp: if otlp_check? { otlp } else { None },
            otlp_findings,
        },
        listen: listen?,
        log: LogConfig {
            format: format?,
            level: level?,
        },
        warnings,
        effective: std::mem::take(&mut r.effective),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> EnvVars {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_sources(&env(pairs), None)
    }

    fn problems(pairs: &[(&str, &str)]) -> Vec<String> {
        load(pairs)
            .expect_err("expected a configuration error")
            .problems
    }

    #[test]
    fn defaults() {
        let c = load(&[("REDIS_ADDRESS", "clustercfg.example:6379")]).unwrap();
        assert_eq!(
            c.redis.addresses,
            vec![HostPort {
                host: "clustercfg.example".into(),
                port: 6379
            }]
        );
        assert!(c.redis.cluster_mode);
        assert_eq!(c.redis.dial_timeout, Duration::from_secs(5));
        assert_eq!(c.redis.read_timeout, Duration::from_secs(3));
        assert_eq!(c.probe.interval, Duration::from_secs(5));
        assert_eq!(c.probe.jitter, 0.2);
        assert_eq!(c.probe.attempts, 3);
        assert_eq!(c.probe.attempt_timeout, Duration::from_secs(2));
        assert_eq!(c.probe.retry_backoff, Duration::from_millis(500));
        assert_eq!(c.probe.failure_threshold, 3);
        assert_eq!(c.probe.success_threshold, 1);
        assert_eq!(c.probe.open_duration, Duration::from_secs(5));
        assert_eq!(c.probe.open_duration_max, Duration::from_secs(30));
        assert_eq!(c.probe.on_failure, OnFailure::Unready);
        assert_eq!(c.listen, "0.0.0.0:8081".parse().unwrap());
        assert_eq!(c.log.format, LogFormat::Json);
        assert!(c.redis.tls.is_none());
        assert_eq!(c.redis.password, PasswordSource::None);
    }

    #[test]
    fn seed_deployment_settings_are_accepted() {
        let c = load(&[
            (
                "REDIS_ADDRESS",
                "clustercfg.traffic-tacos-redis.w6eqga.apn2.cache.amazonaws.com:6379",
            ),
            ("REDIS_CLUSTER_MODE", "true"),
            ("REDIS_TLS_ENABLED", "true"),
            ("REDIS_ROUTE_BY_LATENCY", "true"),
            ("REDIS_READ_ONLY", "true"),
            ("REDIS_POOL_SIZE", "1000"),
            ("REDIS_POOL_TIMEOUT", "10s"),
            ("REDIS_MIN_IDLE_CONNS", "100"),
            ("REDIS_MAX_CONN_AGE", "30m"),
            ("REDIS_PASSWORD_FROM_SECRETS", "true"),
            ("AWS_SECRET_NAME", "traffic-tacos/redis/auth-token"),
            ("REDIS_DIAL_TIMEOUT", "10s"),
            ("REDIS_READ_TIMEOUT", "5s"),
            ("REDIS_WRITE_TIMEOUT", "5s"),
        ])
        .unwrap();
        assert_eq!(c.redis.app_pool.size, Some(1000));
        assert_eq!(
            c.redis.app_pool.max_conn_age,
            Some(Duration::from_secs(1800))
        );
        assert!(c.redis.app_pool.read_only && c.redis.app_pool.route_by_latency);
        assert!(c.redis.tls.is_some());
        // No password source: a warning, not an error.
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    }

    #[test]
    fn bad_values_name_variable_and_value() {
        let p = problems(&[("REDIS_ADDRESS", "a:1"), ("REDIS_POOL_SIZE", "abc")]);
        assert_eq!(p, vec!["REDIS_POOL_SIZE=abc: expected an unsigned integer"]);
        let p = problems(&[("REDIS_ADDRESS", "a:1"), ("PROBE_INTERVAL", "5 parsecs")]);
        assert_eq!(
            p,
            vec!["PROBE_INTERVAL=\"5 parsecs\": expected a duration such as 500ms, 10s or 30m"]
        );
        let p = problems(&[("REDIS_ADDRESS", "a:1"), ("REDIS_TLS_ENABLED", "maybe")]);
        assert_eq!(p, vec!["REDIS_TLS_ENABLED=maybe: expected true or false"]);
    }

    #[test]
    fn every_problem_is_reported() {
        let p = problems(&[
            ("REDIS_POOL_SIZE", "-1"),
            ("PROBE_JITTER", "1.5"),
            ("PROBE_ATTEMPTS", "0"),
            ("PROBE_ON_FAILURE", "panic"),
            ("PROBE_LISTEN", "nowhere"),
            ("PROBE_OPEN_DURATION", "10s"),
            ("PROBE_OPEN_DURATION_MAX", "5s"),
        ]);
        let joined = p.join("\n");
        for needle in [
            "REDIS_ADDRESS is required",
            "REDIS_POOL_SIZE=-1: expected an unsigned integer",
            "PROBE_JITTER=1.5: must be at least 0 and less than 1",
            "PROBE_ATTEMPTS=0: must be at least 1",
            "PROBE_ON_FAILURE=panic: expected unready or degraded",
            "PROBE_LISTEN=nowhere: expected an address",
            "PROBE_OPEN_DURATION_MAX=5s: must not be less than PROBE_OPEN_DURATION=10s",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
    }

    #[test]
    fn addresses() {
        let c = load(&[("REDIS_ADDRESS", "10.0.0.1:7000, 10.0.0.2:7001,[::1]:7002")]).unwrap();
        let shown: Vec<String> = c.redis.addresses.iter().map(ToString::to_string).collect();
        assert_eq!(shown, vec!["10.0.0.1:7000", "10.0.0.2:7001", "[::1]:7002"]);
        for bad in ["redis", "redis:", "redis:0", "redis:99999", ":6379"] {
            let p = problems(&[("REDIS_ADDRESS", bad)]);
            assert!(
                p[0].starts_with(&format!("REDIS_ADDRESS={bad}: expected")),
                "{p:?}"
            );
        }
    }

    #[test]
    fn standalone_takes_one_address() {
        let p = problems(&[
            ("REDIS_ADDRESS", "a:1,b:2"),
            ("REDIS_CLUSTER_MODE", "false"),
        ]);
        assert!(
            p[0].starts_with("REDIS_ADDRESS=a:1,b:2: a list of addresses needs"),
            "{p:?}"
        );
    }

    #[test]
    fn numeric_password_stays_a_string_and_is_never_printed() {
        let c = load(&[("REDIS_ADDRESS", "a:1"), ("REDIS_PASSWORD", "007")]).unwrap();
        assert_eq!(c.redis.password, PasswordSource::Inline(Secret::new("007")));
        let rendered = c.render();
        assert!(rendered.contains("REDIS_PASSWORD=<redacted>"), "{rendered}");
        assert!(!rendered.contains("007"));
        assert!(!format!("{c:?}").contains("007"));
    }

    #[test]
    fn service_link_variables_are_ignored() {
        let c = load(&[
            ("REDIS_ADDRESS", "a:1"),
            ("REDIS_PORT", "tcp://10.0.0.1:6379"),
            ("REDIS_SERVICE_HOST", "10.0.0.1"),
            ("REDIS_PORT_6379_TCP", "tcp://10.0.0.1:6379"),
        ]);
        assert!(c.is_ok(), "{c:?}");
    }

    #[test]
    fn empty_values_mean_unset() {
        let c = load(&[
            ("REDIS_ADDRESS", "a:1"),
            ("REDIS_USERNAME", ""),
            ("PROBE_INTERVAL", ""),
        ])
        .unwrap();
        assert_eq!(c.redis.username, None);
        assert_eq!(c.probe.interval, Duration::from_secs(5));
    }

    #[test]
    fn file_and_environment_layers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("probe.toml");
        std::fs::write(
            &path,
            "[redis]\naddress = \"file:6379\"\npool_size = 50\n[probe]\ninterval = \"2s\"\nattempts = 5\n",
        )
        .unwrap();
        let c = Config::from_sources(&env(&[("PROBE_ATTEMPTS", "4")]), Some(&path)).unwrap();
        assert_eq!(c.redis.addresses[0].host, "file");
        assert_eq!(c.redis.app_pool.size, Some(50));
        assert_eq!(c.probe.interval, Duration::from_secs(2));
        assert_eq!(c.probe.attempts, 4, "the environment wins over the file");

        std::fs::write(
            &path,
            "[redis]\naddress = \"file:6379\"\npool_size = \"many\"\n",
        )
        .unwrap();
        let p = Config::from_sources(&env(&[]), Some(&path))
            .unwrap_err()
            .problems;
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("redis.pool_size = \"many\" in "), "{p:?}");
        assert!(p[0].ends_with("expected an unsigned integer"), "{p:?}");

        let p =
            Config::from_sources(&env(&[("PROBE_CONFIG", "/nonexistent.toml")]), None).unwrap_err();
        assert!(p.problems[0].contains("/nonexistent.toml"), "{p:?}");
    }

    #[test]
    fn tls_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let p = problems(&[
            ("REDIS_ADDRESS", "a:1"),
            ("REDIS_TLS_ENABLED", "true"),
            ("REDIS_TLS_CA_FILE", empty.to_str().unwrap()),
            ("REDIS_TLS_CERT_FILE", "/nonexistent/cert.pem"),
        ]);
        let joined = p.join("\n");
        assert!(
            joined.contains(&format!(
                "REDIS_TLS_CA_FILE={}: holds no PEM certificate",
                empty.display()
            )),
            "{joined}"
        );
        assert!(
            joined.contains("REDIS_TLS_CERT_FILE=/nonexistent/cert.pem: cannot read the file"),
            "{joined}"
        );
    }

    #[test]
    fn password_file_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "s3cret\n").unwrap();
        let c = load(&[
            ("REDIS_ADDRESS", "a:1"),
            ("REDIS_PASSWORD_FILE", f.to_str().unwrap()),
        ])
        .unwrap();
        assert_eq!(c.redis.password, PasswordSource::File(f.clone()));
        assert_eq!(read_password_file(&f).unwrap().expose(), "s3cret");
        let p = problems(&[
            ("REDIS_ADDRESS", "a:1"),
            ("REDIS_PASSWORD", "x"),
            ("REDIS_PASSWORD_FILE", f.to_str().unwrap()),
        ]);
        assert!(p[0].contains("both set"), "{p:?}");
    }
}
