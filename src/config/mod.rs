//! Configuration: built-in defaults < optional TOML file < environment, into one validated
//! [`Config`].
//!
//! The environment uses the names of the application's own deployment (`REDIS_ADDRESS`,
//! `REDIS_TLS_ENABLED`, `REDIS_POOL_SIZE`, ...) so the sidecar can share the app's ConfigMap.
//!
//! - [`keys`]: every key declared once (environment name, TOML path, default, parser, doc);
//!   docs/settings.md's table and `--check-config` come from it.
//! - [`parse`]: the parsers keys name, each with the words of its error.
//! - `source`: the figment providers; `reader`: reads keys and collects problems;
//!   `read`: one reader per section (redis, TLS, probe and breaker, cluster and pool,
//!   upstream and OTLP, log).
//!
//! Two rules keep start-up errors useful and secrets safe:
//! - Only the variables in [`KEYS`] are read. Kubernetes injects service-link variables such as
//!   `REDIS_PORT=tcp://10.0.0.1:6379` for a Service named `redis`; they are ignored.
//! - Environment values enter figment as raw strings and are converted per key, so a password
//!   of `123456` stays a string and `007` is not turned into 7. A bad value is reported as
//!   `NAME=value: expected ...`, every problem at once, and a secret's value is never printed.

pub mod keys;
pub mod parse;
mod read;
mod reader;
mod source;

use std::fmt;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Toml};

pub use self::keys::{ENV_CONFIG_FILE, KEYS, Key, KeyInfo};
use self::parse::Choices;
pub use self::reader::Setting;
use self::reader::{Reader, shown};
use self::source::Defaults;
pub use self::source::EnvVars;

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
    /// The client certificate and key, for mutual TLS.
    pub client: Option<ClientCert>,
    /// Name verified in every node's certificate instead of the address it is reached by.
    pub server_name: Option<String>,
    /// Where the PEM material came from, to read it again when it changes.
    pub files: TlsFiles,
}

/// The files of [`TlsConfig`] (`None` for what is not configured).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// PEM bytes of a client certificate chain and its key.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
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
    /// How long the app keeps an idle pooled connection, and the key that said so.
    pub idle_time: Option<(&'static str, Duration)>,
    pub route_by_latency: bool,
    pub read_only: bool,
}

impl AppPool {
    /// The app also connects to replicas (`REDIS_READ_ONLY` or `REDIS_ROUTE_BY_LATENCY`).
    pub fn reads_from_replicas(&self) -> bool {
        self.read_only || self.route_by_latency
    }
}

/// The shard counts the cluster may have: one number, or auto scaling's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ShardRange {
    pub min: u32,
    pub max: u32,
}

impl ShardRange {
    pub fn contains(self, shards: usize) -> bool {
        (self.min as usize..=self.max as usize).contains(&shards)
    }
}

impl std::fmt::Display for ShardRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}..{}", self.min, self.max)
        }
    }
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
    /// Most nodes followed (`PROBE_MAX_NODES`).
    pub max_nodes: usize,
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
    /// `None`: the server-side view is off.
    pub info_interval: Option<Duration>,
    /// The longest idle the canary tests; `None`: no canary.
    pub idle_canary: Option<Duration>,
    /// maxclients to assume when the server does not tell (ElastiCache disables CONFIG).
    pub maxclients: u64,
    /// Shards the cluster should have, for drift alerts.
    pub expected_shards: Option<ShardRange>,
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
    /// The metrics exporter the app is configured with, whether the check is on or not
    /// (`diagnose` tries it once).
    pub otlp_exporter: Option<crate::otlp::Exporter>,
    /// What the lint found in the OTEL variables (also in `warnings`).
    pub otlp_lints: Vec<crate::otlp::Lint>,
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
    /// Settings that are valid but probably not what was meant, and app settings the sidecar
    /// could not read; logged at start, counted in `redis_probe_config_warning`.
    pub warnings: Vec<Warning>,
    /// Each key's effective value as text (secrets redacted), for `--check-config`.
    pub effective: Vec<Setting>,
}

/// A setting that does not stop start-up but should be looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub kind: WarningKind,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The kinds of [`Warning`], the label of `redis_probe_config_warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WarningKind {
    /// The OTEL exporter variables look wrong.
    Otlp(crate::otlp::LintKind),
    /// An app setting (read as the Go app reads it) that the sidecar could not read: ignored.
    AppSetting,
    /// TLS files are given while TLS is off.
    UnusedTls,
    /// `REDIS_PASSWORD_FROM_SECRETS=true` without a password or password file.
    NoSecretStore,
    /// The attempt timeout is more than twice the interval.
    SlowAttempt,
    /// TLS is on with no CA file and an empty system trust store.
    NoTrustStore,
}

impl WarningKind {
    /// Every kind, for series that exist from the start.
    pub fn all() -> impl Iterator<Item = WarningKind> {
        let others = [
            WarningKind::AppSetting,
            WarningKind::UnusedTls,
            WarningKind::NoSecretStore,
            WarningKind::SlowAttempt,
            WarningKind::NoTrustStore,
        ];
        crate::otlp::LintKind::ALL
            .into_iter()
            .map(WarningKind::Otlp)
            .chain(others)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WarningKind::Otlp(lint) => lint.as_str(),
            WarningKind::AppSetting => "app_setting",
            WarningKind::UnusedTls => "unused_tls",
            WarningKind::NoSecretStore => "no_secret_store",
            WarningKind::SlowAttempt => "slow_attempt",
            WarningKind::NoTrustStore => "no_trust_store",
        }
    }
}

/// Every problem found, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
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
            check_file(path)?;
            figment = figment.merge(Toml::file_exact(path));
        }
        let mut r = Reader {
            figment: figment.merge(env.clone()),
            defaults: Figment::from(Defaults),
            env,
            file,
            problems: vec![],
            warnings: vec![],
            effective: vec![],
        };
        match read::config(&mut r) {
            Some(c) if r.problems.is_empty() => Ok(c),
            _ => Err(ConfigError {
                problems: r.problems,
            }),
        }
    }

    /// Every key as a `NAME=value` line with its TOML path and source, unset keys too (as
    /// `NAME=`, which the environment reads as unset), secrets redacted; then the warnings.
    pub fn render(&self) -> String {
        let lines: Vec<(String, String)> = KEYS
            .iter()
            .map(
                |k| match self.effective.iter().find(|s| s.key.env == k.env) {
                    Some(s) => (
                        format!("{}={}", k.env, shown(&s.value)),
                        format!("{}, {}", k.path, s.source),
                    ),
                    None => (
                        format!("{}=", k.env),
                        match k.default {
                            keys::KeyDefault::Implied(words) => {
                                format!("{}, not set: {}", k.path, words.trim_matches('`'))
                            }
                            _ => format!("{}, not set", k.path),
                        },
                    ),
                },
            )
            .collect();
        let width = lines.iter().map(|(kv, _)| kv.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (kv, note) in lines {
            let _ = writeln!(out, "{kv:<width$}  # {note}");
        }
        for w in &self.warnings {
            let _ = writeln!(out, "# warning: {w}");
        }
        out
    }
}

/// The config file exists and is TOML. A parse error names the file, line and column but never
/// shows the line: it may hold the password.
fn check_file(path: &Path) -> Result<(), ConfigError> {
    use figment::Provider;
    let problem = |what: String| ConfigError {
        problems: vec![format!("config file {}: {what}", path.display())],
    };
    if !path.is_file() {
        return Err(problem("no such file".into()));
    }
    match Toml::file_exact(path).data() {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = e.to_string();
            // toml's message starts "TOML parse error at line L, column C" and goes on to
            // quote the line.
            let at = text
                .find("at line ")
                .map(|i| &text[i..])
                .and_then(|t| t.lines().next())
                .unwrap_or("");
            Err(problem(format!(
                "not valid TOML {at} (the line is not shown: it may hold a secret)"
            )))
        }
    }
}

impl Choices for OnFailure {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("unready", OnFailure::Unready),
        ("degraded", OnFailure::Degraded),
    ];
}

impl Choices for LogFormat {
    const CHOICES: &'static [(&'static str, Self)] =
        &[("json", LogFormat::Json), ("text", LogFormat::Text)];
}

#[cfg(test)]
mod tests;
