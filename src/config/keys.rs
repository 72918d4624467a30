//! Every configuration key, declared once: its environment name, TOML path, default, parser and
//! one line of documentation. The reader ([`super::read`]), `--check-config` and docs/settings.md's
//! configuration table all come from this table; `tests/manifests.rs` fails when docs/settings.md's
//! table differs from [`markdown_table`].
//!
//! Adding a setting: add one line to [`keys!`] below, read it in the section reader of
//! `config/read.rs`, and paste the table the test prints into docs/settings.md.

use std::fmt::Write as _;
use std::marker::PhantomData;
use std::ops::Deref;

use super::parse::{
    Addresses, App, CertFile, Choice, Count, DnsName, Flag, HttpUrl, KeyFile, Listen, LogLevel,
    OffOrPositive, Parser, Positive, ReadableFile, SecretText, ShardCount, Span, Text, Unit,
    Unsigned, UrlText,
};
use super::{LogFormat, OnFailure};

/// The variable naming the optional TOML file (also `--config FILE`).
pub const ENV_CONFIG_FILE: &str = "PROBE_CONFIG";

/// A key's default, as the reader uses it and as docs/settings.md shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDefault {
    /// A value, written as it would be in the environment.
    Value(&'static str),
    /// No value: the setting is off or absent.
    Unset,
    /// No value, and start-up fails without one.
    Required,
    /// No value; what applies instead, in words (`system roots`).
    Implied(&'static str),
}

/// One key, whatever its type.
#[derive(Clone, Copy)]
pub struct KeyInfo {
    /// Environment variable name.
    pub env: &'static str,
    /// Dotted path in the TOML file.
    pub path: &'static str,
    pub default: KeyDefault,
    /// One line for docs/settings.md and `--help`.
    pub doc: &'static str,
    /// Never printed.
    pub secret: bool,
    /// The app's own setting, read as the Go app reads it: a value the sidecar cannot read is
    /// a warning, never a reason not to start.
    pub lenient: bool,
    /// How a value is shown (URLs without credentials).
    pub shown: fn(&str) -> String,
}

impl PartialEq for KeyInfo {
    fn eq(&self, other: &Self) -> bool {
        self.env == other.env
    }
}
impl Eq for KeyInfo {}

impl std::fmt::Debug for KeyInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.env)
    }
}

impl KeyInfo {
    /// The built-in default, as it would be written in the environment.
    pub fn default_value(&self) -> Option<&'static str> {
        match self.default {
            KeyDefault::Value(v) => Some(v),
            _ => None,
        }
    }

    /// The default as docs/settings.md's table shows it.
    pub fn shown_default(&self) -> String {
        match self.default {
            KeyDefault::Value(v) => format!("`{v}`"),
            KeyDefault::Unset => "none".into(),
            KeyDefault::Required => "required".into(),
            KeyDefault::Implied(words) => words.into(),
        }
    }
}

/// A key whose value is read by the parser `P`.
pub struct Key<P> {
    pub info: KeyInfo,
    parser: PhantomData<fn() -> P>,
}

impl<P> Clone for Key<P> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<P> Copy for Key<P> {}

impl<P> Deref for Key<P> {
    type Target = KeyInfo;
    fn deref(&self) -> &KeyInfo {
        &self.info
    }
}

impl<P: Parser> Key<P> {
    const fn new(
        env: &'static str,
        path: &'static str,
        default: KeyDefault,
        doc: &'static str,
    ) -> Self {
        Key {
            info: KeyInfo {
                env,
                path,
                default,
                doc,
                secret: P::SECRET,
                lenient: P::LENIENT,
                shown: P::shown,
            },
            parser: PhantomData,
        }
    }
}

/// Declares each key once and [`KEYS`], the list of them in `--check-config` order.
macro_rules! keys {
    ($($name:ident: $parser:ty = $path:literal, $default:expr, $doc:literal;)*) => {
        $(
            #[doc = $doc]
            pub const $name: Key<$parser> = Key::new(stringify!($name), $path, $default, $doc);
        )*
        /// Every key, in the order `--check-config` and docs/settings.md list them.
        pub const KEYS: &[KeyInfo] = &[$($name.info),*];
    };
}

use KeyDefault::{Implied, Required, Unset, Value};

keys! {
    REDIS_ADDRESS: Addresses = "redis.address", Required,
        "`host:port`; a comma-separated list of seed nodes is allowed. The configuration endpoint on ElastiCache.";
    REDIS_CLUSTER_MODE: Flag = "redis.cluster_mode", Value("true"),
        "`false`: cluster mode disabled, one server (one address: the primary endpoint), which must say `role:master` in `INFO replication`.";
    REDIS_USERNAME: Text = "redis.username", Unset,
        "ACL user.";
    REDIS_PASSWORD: SecretText = "redis.password", Unset,
        "AUTH token. Read as a raw string (`007` stays `007`). Never printed.";
    REDIS_PASSWORD_FILE: ReadableFile = "redis.password_file", Unset,
        "File holding the token (one trailing newline is ignored); re-read after an AUTH failure. Exclusive with `REDIS_PASSWORD`.";
    REDIS_TLS_ENABLED: Flag = "redis.tls.enabled", Value("false"),
        "TLS to every node.";
    REDIS_TLS_CA_FILE: CertFile = "redis.tls.ca_file", Implied("system roots"),
        "PEM CA bundle; checked at start to hold a certificate.";
    REDIS_TLS_CERT_FILE: CertFile = "redis.tls.cert_file", Unset,
        "Client certificate (PEM) for mutual TLS; needs `REDIS_TLS_KEY_FILE`.";
    REDIS_TLS_KEY_FILE: KeyFile = "redis.tls.key_file", Unset,
        "Client key (PEM).";
    REDIS_TLS_SERVER_NAME: DnsName = "redis.tls.server_name", Implied("the node's address"),
        "Name verified in every node's certificate, for nodes announced by IP with a certificate for a host name.";
    REDIS_DIAL_TIMEOUT: App<Positive> = "redis.dial_timeout", Value("5s"),
        "TCP + TLS + AUTH of a new connection (also bounded by the attempt timeout).";
    REDIS_READ_TIMEOUT: App<Positive> = "redis.read_timeout", Value("3s"),
        "Reply timeout of a command (also bounded by the attempt timeout).";
    REDIS_WRITE_TIMEOUT: App<Positive> = "redis.write_timeout", Value("3s"),
        "Accepted and validated for the app's ConfigMap; redis-rs has no write timeout, the attempt timeout bounds writes.";
    REDIS_POOL_SIZE: App<Unsigned> = "redis.pool_size", Unset,
        "The app's go-redis pool size, **per node**. Sets the pod's ceiling `redis_pool_max_conns`; redis-probe itself keeps one connection per node.";
    REDIS_POOL_TIMEOUT: App<Span> = "redis.pool_timeout", Unset,
        "The app's setting; validated, not used.";
    REDIS_MIN_IDLE_CONNS: App<Unsigned> = "redis.min_idle_conns", Unset,
        "The app's setting; validated, not used.";
    REDIS_MAX_CONN_AGE: App<Span> = "redis.max_conn_age", Unset,
        "The app's setting; validated, not used.";
    REDIS_CONN_MAX_IDLE_TIME: App<Span> = "redis.conn_max_idle_time", Unset,
        "The app's go-redis v9 `ConnMaxIdleTime` (its default: 30m). `diagnose` compares it with the idle cut the canary measured.";
    REDIS_IDLE_TIMEOUT: App<Span> = "redis.idle_timeout", Unset,
        "The app's go-redis v8 `IdleTimeout` (its default: 5m), compared the same way when `REDIS_CONN_MAX_IDLE_TIME` is not set.";
    REDIS_ROUTE_BY_LATENCY: App<Flag> = "redis.route_by_latency", Value("false"),
        "The app's setting: when true the app also connects to replicas, so the ceiling counts every node.";
    REDIS_READ_ONLY: App<Flag> = "redis.read_only", Value("false"),
        "As `REDIS_ROUTE_BY_LATENCY`.";
    REDIS_PASSWORD_FROM_SECRETS: App<Flag> = "redis.password_from_secrets", Value("false"),
        "The app's setting. redis-probe calls no secret store: when true and no password is given, start-up logs a warning to mount the secret and set `REDIS_PASSWORD_FILE`.";
    AWS_SECRET_NAME: App<Text> = "redis.aws_secret_name", Unset,
        "The app's setting; validated, not used.";
    PROBE_LISTEN: Listen = "server.listen", Value("[::]:8081"),
        "HTTP listen address. `[::]` takes IPv4 and IPv6 (IPv6-only clusters probe the pod's IPv6 address); where the pod has no IPv6, `0.0.0.0` is used instead, with a log line.";
    PROBE_INTERVAL: Positive = "probe.interval", Value("5s"),
        "Time from the end of one check to the start of the next, ±jitter.";
    PROBE_JITTER: Unit = "probe.jitter", Value("0.2"),
        "Spread of every delay, from 0 to below 1 (±20 % for the interval and retries; up to 20 % shorter for open durations; the first check within interval x jitter).";
    PROBE_ATTEMPTS: Count = "probe.attempts", Value("3"),
        "Attempts per check.";
    PROBE_ATTEMPT_TIMEOUT: Positive = "probe.attempt_timeout", Value("2s"),
        "Bound on one attempt, connect and TLS included.";
    PROBE_RETRY_BACKOFF: Positive = "probe.retry_backoff", Value("500ms"),
        "First delay between attempts; doubles, with jitter.";
    PROBE_FAILURE_THRESHOLD: Count = "probe.failure_threshold", Value("3"),
        "Failed checks in a row that open the breaker.";
    PROBE_SUCCESS_THRESHOLD: Count = "probe.success_threshold", Value("1"),
        "Passing trial checks in a row that close it.";
    PROBE_OPEN_DURATION: Positive = "probe.open_duration", Value("5s"),
        "First open duration.";
    PROBE_OPEN_DURATION_MAX: Positive = "probe.open_duration_max", Value("30s"),
        "Cap of the doubling open duration.";
    PROBE_ON_FAILURE: Choice<OnFailure> = "probe.on_failure", Value("unready"),
        "`unready`: 503 when Redis is down. `degraded`: 200 with `degraded`.";
    PROBE_INFO_INTERVAL: OffOrPositive = "cluster.info_interval", Value("30s"),
        "How often `INFO clients stats` is read from every node, over the connections already held, and the cluster metrics published (from the `CLUSTER INFO` each check reads with the topology). `0` turns the per-pod server view off (no `redis_connected_clients`, `redis_max_clients`, `redis_cluster_*` series): every pod exports the same per-node numbers, so a large fleet may leave them to a few pods or to redis_exporter.";
    PROBE_MAXCLIENTS: Count<{ u32::MAX }> = "cluster.maxclients", Value("65000"),
        "maxclients to assume when neither INFO nor `CONFIG GET` tells (ElastiCache disables CONFIG; its limit is 65,000).";
    PROBE_EXPECTED_SHARDS: ShardCount = "cluster.expected_shards", Unset,
        "Shards the cluster should have: `N`, or `MIN..MAX` with shard auto scaling (Terraform's `min_node_groups..max_node_groups`; at low CPU target tracking scales in to the minimum). Exported for drift alerts, which fire only outside it.";
    PROBE_MAX_NODES: Count<10000> = "cluster.max_nodes", Value("1000"),
        "Most nodes followed; a topology with more keeps whole shards in order up to this many, with one log line and a `topology_truncated` finding in `diagnose`. Bounds connections, memory and series whatever a server reports (ElastiCache's largest cluster has 500 nodes).";
    PROBE_IDLE_CANARY: OffOrPositive = "cluster.idle_canary", Value("6m"),
        "The longest idle the canary tests: per node one more connection, left idle and then PINGed, learns the idle age at which something on the path cuts connections (`redis_idle_cut_seconds`). 6 minutes covers AWS's 350 s idle timeouts (NLB, Network Firewall, Nitro v6 connection tracking); it costs one connection per node per pod and one PING per node per idle. `0` turns it off.";
    PROBE_POOL_INTERVAL: Positive = "pool.interval", Value("15s"),
        "How often the pod's sockets are counted from `/proc/net/tcp{,6}`. Each read makes the kernel walk its socket table (1-2 ms of kernel time per read on the machine measured here), so this is the sidecar's largest idle CPU cost.";
    PROBE_POOL_MAX_CONNS: Unsigned = "pool.max_conns", Implied("computed"),
        "Overrides the pod's ceiling (`REDIS_POOL_SIZE` x nodes the app uses).";
    PROBE_UPSTREAM_READYZ: HttpUrl = "upstream.readyz", Unset,
        "The app's own readiness URL (`http://127.0.0.1:8000/readyz`): polled in the background, gates `/readyz` as the `app` check.";
    PROBE_UPSTREAM_TIMEOUT: Positive = "upstream.timeout", Value("1s"),
        "Timeout of one poll of the app.";
    PROBE_UPSTREAM_FAILURE_THRESHOLD: Count = "upstream.failure_threshold", Value("3"),
        "Failed polls in a row before the app counts as not ready (one success makes it ready).";
    OTEL_EXPORTER_OTLP_ENDPOINT: UrlText = "otlp.endpoint", Unset,
        "The app's OTLP endpoint (standard variable, from the app's ConfigMap): linted, and the collector checked.";
    OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: UrlText = "otlp.metrics_endpoint", Unset,
        "Metrics-specific endpoint, used as is (wins over the general one).";
    OTEL_EXPORTER_OTLP_PROTOCOL: Text = "otlp.protocol", Implied("`http/protobuf`"),
        "`grpc`, `http/protobuf` or `http/json`.";
    OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: Text = "otlp.metrics_protocol", Unset,
        "Metrics-specific protocol (wins).";
    PROBE_OTLP_CHECK: Flag = "otlp.check", Value("false"),
        "`true` also checks the collector with an empty export at the health-check interval (a new connection from every pod each time); the lint of the `OTEL_*` variables runs either way.";
    PROBE_LOG_FORMAT: Choice<LogFormat> = "log.format", Value("json"),
        "`json` or `text`.";
    PROBE_LOG_LEVEL: LogLevel = "log.level", Value("info"),
        "A level or an `EnvFilter` directive.";
}

/// docs/settings.md's configuration table: one row per key, then the config file's own variable.
pub fn markdown_table() -> String {
    let mut out = String::from("| variable | TOML | default | meaning |\n|---|---|---|---|\n");
    for k in KEYS {
        let app = if k.lenient { "*App setting.* " } else { "" };
        let _ = writeln!(
            out,
            "| `{}` | `{}` | {} | {app}{} |",
            k.env,
            k.path,
            k.shown_default(),
            k.doc
        );
    }
    let _ = writeln!(
        out,
        "| `{ENV_CONFIG_FILE}` | - | none | The TOML file (same as `--config`). |"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_are_unique() {
        let mut envs: Vec<_> = KEYS.iter().map(|k| k.env).collect();
        let mut paths: Vec<_> = KEYS.iter().map(|k| k.path).collect();
        envs.sort_unstable();
        paths.sort_unstable();
        envs.dedup();
        paths.dedup();
        assert_eq!(envs.len(), KEYS.len());
        assert_eq!(paths.len(), KEYS.len());
    }

    #[test]
    fn only_the_password_is_secret() {
        let secret: Vec<_> = KEYS.iter().filter(|k| k.secret).map(|k| k.env).collect();
        assert_eq!(secret, vec!["REDIS_PASSWORD"]);
    }
}
