//! The HTTP server for the kubelet and Prometheus (hyper 1, HTTP/1.1).
//!
//! * `GET /livez`: 200 `ok` unless the health loop has died or stalled. Never depends on Redis:
//!   a Redis outage must not restart pods.
//! * `GET /readyz`: 200 `ok`, or 503 with the failing checks, in kube-apiserver's format.
//!   `?verbose` lists every check (`[+]redis ok`, `[-]redis failed: <reason>`), `?exclude=redis`
//!   skips one, and `/readyz/redis`, `/readyz/shutdown` answer for one check.
//! * `/readyz/app`, `/readyz/otlp`: the app's own readiness (`PROBE_UPSTREAM_READYZ`, gating)
//!   and the OTLP collector (never gating), when configured.
//! * `GET /metrics`: OpenMetrics text when the client asks for it (Prometheus does), else the
//!   Prometheus text format 0.0.4.
//!
//! `HEAD` works wherever `GET` does; other methods get 405, unknown paths 404. Handlers read the
//! snapshot the health loop published and never wait on Redis. [`connections`] keeps probes
//! answered whatever other clients do (eviction of the oldest, write and header timeouts).

mod connections;
mod scrape;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::time::Instant;

use crate::checks::SideCheck;
use crate::config::OnFailure;
use crate::events::EventLog;
use crate::health::{Health, Rx};
use crate::metrics::{self, Metrics};
use crate::probe::NodeReport;

pub use self::connections::{
    CLOSE_GRACE, HEADER_READ_TIMEOUT, MAX_CONNECTIONS, SHUTDOWN_GRACE, WRITE_TIMEOUT, bind, serve,
};
pub use self::scrape::SCRAPES_PER_CPU_SECOND;

/// How often the CPU limit is read again (Kubernetes can resize a pod in place).
pub const CPU_LIMIT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Follows the process's CPU limit (`crate::cpulimit`, read on a blocking thread) and paces
/// scrapes to it; logs each change.
pub async fn follow_cpu_limit(state: Arc<AppState>) {
    let mut last: Option<Option<f64>> = None;
    loop {
        let cores = tokio::task::spawn_blocking(crate::cpulimit::cpu_limit)
            .await
            .ok()
            .flatten();
        if last != Some(cores) {
            state.set_cpu_limit(cores);
            match (cores, state.scrape_pacer.rate()) {
                (Some(c), Some(rate)) => tracing::info!(
                    cpu_limit = c,
                    scrapes_per_second = rate.round() as u64,
                    "CPU limit found: /metrics paced so that probes keep the CPU"
                ),
                _ if last.is_some() => tracing::info!("no CPU limit: /metrics not paced"),
                _ => {}
            }
            last = Some(cores);
        }
        tokio::time::sleep(CPU_LIMIT_INTERVAL).await;
    }
}

/// Longest request target accepted.
pub const MAX_URI_LEN: usize = 2048;

/// What handlers read.
pub struct AppState {
    health: Rx,
    /// Checks beside Redis (the app's readiness, the OTLP collector).
    side_checks: Vec<SideCheck>,
    metrics: Arc<Metrics>,
    on_failure: OnFailure,
    draining: AtomicBool,
    scrapes: scrape::ScrapeCache,
    scrape_pacer: scrape::ScrapePacer,
    /// The event log served on `/events`, when there is one.
    events: std::sync::OnceLock<EventLog>,
}

impl AppState {
    pub fn new(
        health: Rx,
        metrics: Arc<Metrics>,
        on_failure: OnFailure,
        side_checks: Vec<SideCheck>,
    ) -> Arc<Self> {
        Arc::new(AppState {
            health,
            side_checks,
            metrics,
            on_failure,
            draining: AtomicBool::new(false),
            scrapes: scrape::ScrapeCache::default(),
            scrape_pacer: scrape::ScrapePacer::default(),
            events: std::sync::OnceLock::new(),
        })
    }

    /// Serves `events` on `/events`.
    pub fn with_events(self: Arc<Self>, events: EventLog) -> Arc<Self> {
        let _ = self.events.set(events);
        self
    }

    /// Turns `/readyz` to 503 at once; called when SIGTERM arrives.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// The CPU limit now (`None`: none), which sets the scrape pace.
    fn set_cpu_limit(&self, cores: Option<f64>) {
        self.scrape_pacer.set_limit(cores);
        self.metrics.set_cpu_limit(cores);
    }

    fn loop_status(&self, health: &Health, now: Instant) -> Result<(), &'static str> {
        // The sender lives in the health loop task: if that task died, the channel is closed.
        if self.health.has_changed().is_err() {
            return Err("health loop exited");
        }
        if health.stalled(now) {
            Err("health loop stalled")
        } else {
            Ok(())
        }
    }
}

type Body = Full<Bytes>;

/// Answers one request from published state.
pub fn handle(state: &AppState, req: &Request<Incoming>) -> Response<Body> {
    route(
        state,
        req.method(),
        req.uri().path(),
        req.uri().query(),
        req.headers().get(ACCEPT),
    )
}

/// Routing without a request body, so benchmarks and tests can call it directly.
pub fn route(
    state: &AppState,
    method: &Method,
    path: &str,
    query: Option<&str>,
    accept: Option<&HeaderValue>,
) -> Response<Body> {
    if path.len() + query.map_or(0, str::len) > MAX_URI_LEN {
        return static_text(StatusCode::URI_TOO_LONG, "request target too long\n");
    }
    let known = matches!(path, "/livez" | "/readyz" | "/metrics" | "/events")
        || path.starts_with("/readyz/")
        || path.starts_with("/livez/");
    if !known {
        return static_text(StatusCode::NOT_FOUND, "not found\n");
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = static_text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let q = Query::parse(query);
    let now = Instant::now();
    match path {
        "/metrics" => {
            // redis_probe_ready says what /readyz would answer now, with every check (app,
            // shutdown, a stalled loop) and not only Redis: read from the same state.
            let ready = ready_checks(state, now)
                .iter()
                .all(|c| !matches!(c.status, Status::Failed(_)));
            metrics_rsp(state, accept, ready, now)
        }
        "/events" => match state.events.get() {
            Some(log) => {
                let mut r = Response::new(Full::new(Bytes::from(log.json_lines())));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/x-ndjson"),
                );
                r
            }
            None => static_text(StatusCode::NOT_FOUND, "no event log\n"),
        },
        "/livez" => checks_rsp("livez", &live_checks(state, now), &q, None),
        "/readyz" => checks_rsp("readyz", &ready_checks(state, now), &q, None),
        p => {
            let (kind, checks) = match p.strip_prefix("/readyz/") {
                Some(name) => (("readyz", name), ready_checks(state, now)),
                None => (
                    ("livez", p.trim_start_matches("/livez/")),
                    live_checks(state, now),
                ),
            };
            checks_rsp(kind.0, &checks, &q, Some(kind.1))
        }
    }
}

/// One named check and its outcome.
struct Check {
    name: &'static str,
    status: Status,
    /// Shown after the status with `?verbose`, e.g. which replica is down.
    note: Option<String>,
}

enum Status {
    Ok,
    Failed(String),
    /// Failing, but configured not to gate readiness (`PROBE_ON_FAILURE=degraded`).
    Degraded(String),
    /// Failing, and never gating readiness (the OTLP collector).
    NonCritical(String),
}

fn live_checks(state: &AppState, now: Instant) -> Vec<Check> {
    let status = match state.loop_status(&state.health.borrow(), now) {
        Ok(()) => Status::Ok,
        Err(why) => Status::Failed(why.into()),
    };
    vec![
        Check {
            name: "ping",
            status: Status::Ok,
            note: None,
        },
        Check {
            name: "healthloop",
            status,
            note: None,
        },
    ]
}

fn ready_checks(state: &AppState, now: Instant) -> Vec<Check> {
    // One read of the published state for the whole answer.
    let health = state.health.borrow();
    let redis = match state
        .loop_status(&health, now)
        .and_then(|()| health.redis_status(now))
    {
        Ok(()) => Status::Ok,
        Err(why) if state.on_failure == OnFailure::Degraded => Status::Degraded(why.into()),
        Err(why) => Status::Failed(why.into()),
    };
    let shutdown = if state.draining.load(Ordering::SeqCst) {
        Status::Failed("shutting down".into())
    } else {
        Status::Ok
    };
    let mut checks = vec![
        Check {
            name: "redis",
            status: redis,
            note: node_note(&health.nodes),
        },
        Check {
            name: "shutdown",
            status: shutdown,
            note: None,
        },
    ];
    for side in &state.side_checks {
        let status = match side.status() {
            Ok(()) => Status::Ok,
            Err(text) if side.critical => Status::Failed(text),
            Err(text) => Status::NonCritical(text),
        };
        let note = (!side.critical && side.pending()).then(|| "(not checked yet)".to_string());
        checks.push(Check {
            name: side.name,
            status,
            note,
        });
    }
    checks
}

/// Names the failing nodes when some, but not all, failed: a replica that is down does not fail
/// the check but should be visible, and `no_primary` should say which primary. When every node
/// failed, the check's reason already says it all.
fn node_note(nodes: &[NodeReport]) -> Option<String> {
    let failed: Vec<String> = nodes
        .iter()
        .filter_map(|n| Some(format!("{} {} {}", n.role, n.addr, n.result.err()?)))
        .collect();
    if failed.is_empty() || failed.len() == nodes.len() {
        return None;
    }
    Some(format!(
        "({} of {} nodes failing: {})",
        failed.len(),
        nodes.len(),
        failed.join(", ")
    ))
}

/// The parts of the query string the health endpoints understand.
#[derive(Debug, Default)]
struct Query<'a> {
    verbose: bool,
    exclude: Vec<&'a str>,
}

impl<'a> Query<'a> {
    fn parse(q: Option<&'a str>) -> Self {
        let mut out = Query::default();
        for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "verbose" => out.verbose = v != "false" && v != "0",
                "exclude" => out.exclude.extend(v.split(',').filter(|s| !s.is_empty())),
                _ => {}
            }
        }
        out
    }
}

/// kube-apiserver's health format.
fn checks_rsp(kind: &str, checks: &[Check], q: &Query<'_>, only: Option<&str>) -> Response<Body> {
    if let Some(name) = only {
        let Some(c) = checks.iter().find(|c| c.name == name) else {
            return static_text(StatusCode::NOT_FOUND, "not found\n");
        };
        return match &c.status {
            Status::Ok => static_text(StatusCode::OK, "ok\n"),
            Status::Degraded(why) => text(StatusCode::OK, &format!("degraded: {why}\n")),
            Status::Failed(why) | Status::NonCritical(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("internal server error: {name} failed: {why}\n"),
            ),
        };
    }
    let counted = || checks.iter().filter(|c| !q.exclude.contains(&c.name));
    let failed = counted().any(|c| matches!(c.status, Status::Failed(_)));
    if !failed && !q.verbose {
        // The kubelet's case: no body to build, nothing to allocate.
        let degraded = counted().any(|c| matches!(c.status, Status::Degraded(_)));
        return static_text(StatusCode::OK, if degraded { "degraded\n" } else { "ok\n" });
    }
    let mut body = String::new();
    for c in checks {
        if q.exclude.contains(&c.name) {
            let _ = writeln!(body, "[+]{} excluded: ok", c.name);
            continue;
        }
        let _ = match &c.status {
            Status::Ok => write!(body, "[+]{} ok", c.name),
            Status::NonCritical(why) => write!(body, "[-]{} failed: {why} (non-critical)", c.name),
            Status::Degraded(why) => write!(body, "[+]{} degraded: {why}", c.name),
            Status::Failed(why) => write!(body, "[-]{} failed: {why}", c.name),
        };
        match &c.note {
            Some(note) if q.verbose => {
                let _ = writeln!(body, " {note}");
            }
            _ => body.push('\n'),
        }
    }
    let unknown: Vec<String> = q
        .exclude
        .iter()
        .filter(|e| !checks.iter().any(|c| c.name == **e))
        .map(|e| format!("{e:?}"))
        .collect();
    if !unknown.is_empty() {
        let _ = writeln!(
            body,
            "warn: some health checks cannot be excluded: no matches for {}",
            unknown.join(",")
        );
    }
    let (status, verdict) = if failed {
        (StatusCode::SERVICE_UNAVAILABLE, "failed")
    } else {
        (StatusCode::OK, "passed")
    };
    let _ = writeln!(body, "{kind} check {verdict}");
    text(status, &body)
}

fn metrics_rsp(
    state: &AppState,
    accept: Option<&HeaderValue>,
    ready: bool,
    now: Instant,
) -> Response<Body> {
    let openmetrics = accept
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let body = state.scrapes.body(&state.metrics, openmetrics, ready, now);
    let content_type = if openmetrics {
        metrics::OPENMETRICS_CONTENT_TYPE
    } else {
        metrics::PROMETHEUS_CONTENT_TYPE
    };
    let mut r = Response::new(Full::new(body));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    with_text_headers(status, Bytes::copy_from_slice(body.as_bytes()))
}

/// [`text`] for a body known at compile time: no copy.
fn static_text(status: StatusCode, body: &'static str) -> Response<Body> {
    with_text_headers(status, Bytes::from_static(body.as_bytes()))
}

fn with_text_headers(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let q = Query::parse(Some("verbose&exclude=redis&exclude=a,b&x=1"));
        assert!(q.verbose);
        assert_eq!(q.exclude, vec!["redis", "a", "b"]);
        assert!(!Query::parse(Some("verbose=false")).verbose);
        assert!(!Query::parse(None).verbose);
        let q = Query::parse(Some("&&=&exclude"));
        assert!(q.exclude.is_empty());
    }

    fn body(r: Response<Body>) -> (StatusCode, String) {
        use http_body_util::BodyExt;
        let status = r.status();
        let bytes = futures_util::FutureExt::now_or_never(r.into_body().collect())
            .unwrap()
            .unwrap()
            .to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[test]
    fn kube_format() {
        let checks = vec![
            Check {
                name: "redis",
                status: Status::Failed("connection_refused".into()),
                note: None,
            },
            Check {
                name: "shutdown",
                status: Status::Ok,
                note: None,
            },
        ];
        let (s, b) = body(checks_rsp("readyz", &checks, &Query::default(), None));
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            b,
            "[-]redis failed: connection_refused\n[+]shutdown ok\nreadyz check failed\n"
        );
        let q = Query::parse(Some("exclude=redis&exclude=nope&verbose"));
        let (s, b) = body(checks_rsp("readyz", &checks, &q, None));
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            b,
            "[+]redis excluded: ok\n[+]shutdown ok\nwarn: some health checks cannot be excluded: no matches for \"nope\"\nreadyz check passed\n"
        );
        let (s, b) = body(checks_rsp(
            "readyz",
            &checks,
            &Query::default(),
            Some("redis"),
        ));
        assert_eq!(
            (s, b.as_str()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "internal server error: redis failed: connection_refused\n"
            )
        );
        let (s, _) = body(checks_rsp(
            "readyz",
            &checks,
            &Query::default(),
            Some("nope"),
        ));
        assert_eq!(s, StatusCode::NOT_FOUND);
    }

    #[test]
    fn degraded_stays_200() {
        let checks = vec![Check {
            name: "redis",
            status: Status::Degraded("connection_refused".into()),
            note: None,
        }];
        let (s, b) = body(checks_rsp("readyz", &checks, &Query::default(), None));
        assert_eq!((s, b.as_str()), (StatusCode::OK, "degraded\n"));
        let (s, b) = body(checks_rsp(
            "readyz",
            &checks,
            &Query::parse(Some("verbose")),
            None,
        ));
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            b,
            "[+]redis degraded: connection_refused\nreadyz check passed\n"
        );
    }
}
