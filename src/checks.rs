//! Checks beside Redis, each a background task like the Redis loop, publishing on its own
//! `watch` channel so `/readyz` only reads:
//! - **app**: polls the application's own readiness URL (`PROBE_UPSTREAM_READYZ`). It gates
//!   readiness, with its own hysteresis: `PROBE_UPSTREAM_FAILURE_THRESHOLD` failed polls in a
//!   row make the app not ready, one success makes it ready again.
//! - **otlp**: sends an empty metrics export to the collector the app is configured with, over
//!   the configured protocol (OTLP/HTTP `POST /v1/metrics`, or OTLP/gRPC `Export` over HTTP/2).
//!   It never gates readiness: losing metrics must not take pods out of service.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Full};
use hyper::Uri;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::otlp::{Exporter, Protocol};
use crate::schedule::Jitter;

/// Most bytes of a response body read; the rest is dropped.
const MAX_BODY: usize = 64 * 1024;

/// Why a poll failed: a closed set, used as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PollReason {
    /// The answer was not 2xx (or gRPC status not 0).
    HttpStatus,
    Timeout,
    ConnectionRefused,
    ConnectionReset,
    Tls,
    Other,
}

impl PollReason {
    pub const ALL: [PollReason; 6] = [
        PollReason::HttpStatus,
        PollReason::Timeout,
        PollReason::ConnectionRefused,
        PollReason::ConnectionReset,
        PollReason::Tls,
        PollReason::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PollReason::HttpStatus => "http_status",
            PollReason::Timeout => "timeout",
            PollReason::ConnectionRefused => "connection_refused",
            PollReason::ConnectionReset => "connection_reset",
            PollReason::Tls => "tls",
            PollReason::Other => "other",
        }
    }
}

/// What a check last saw.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CheckState {
    /// `None` before the first poll.
    pub last: Option<Result<(), Failure>>,
    pub consecutive_failures: u32,
    /// For gating checks: passes its hysteresis.
    pub ok: bool,
}

/// A failed poll: the label and the text shown after `failed:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: PollReason,
    pub text: String,
}

impl Failure {
    fn new(reason: PollReason, text: impl Into<String>) -> Self {
        Failure {
            reason,
            text: text.into(),
        }
    }
}

/// A check beside Redis, as the server sees it.
#[derive(Clone, Debug)]
pub struct SideCheck {
    pub name: &'static str,
    /// Gates readiness when true.
    pub critical: bool,
    pub state: watch::Receiver<CheckState>,
}

impl SideCheck {
    /// True before the first poll (a non-critical check then passes, saying so).
    pub fn pending(&self) -> bool {
        self.state.borrow().last.is_none()
    }

    /// `Ok` or the text to show after `failed:`.
    pub fn status(&self) -> Result<(), String> {
        let s = self.state.borrow();
        match &s.last {
            None if self.critical => Err("not checked yet".into()),
            None => Ok(()),
            Some(Ok(())) => Ok(()),
            // Below the threshold a gating check still passes.
            Some(Err(_)) if self.critical && s.ok => Ok(()),
            Some(Err(f)) => Err(f.text.clone()),
        }
    }
}

/// What a check polls.
#[derive(Debug, Clone)]
pub enum Target {
    /// GET, success on 2xx.
    Readiness(Uri),
    /// An empty OTLP metrics export.
    Otlp(Exporter),
}

/// One check's settings.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: &'static str,
    pub target: Target,
    /// Bound on one poll.
    pub timeout: Duration,
    /// Failed polls in a row before a gating check fails.
    pub failure_threshold: u32,
    /// Gates readiness.
    pub critical: bool,
    /// Time between polls, and its spread.
    pub interval: Duration,
    pub jitter: f64,
}

/// Starts the checks the configuration asks for, each a task in `tasks`: the app's readiness
/// (gating) and the OTLP collector (never gating).
pub fn spawn_all(
    config: &Config,
    metrics: &Arc<Metrics>,
    rng: impl Jitter + Clone,
    tasks: &mut JoinSet<()>,
) -> Vec<SideCheck> {
    let c = &config.checks;
    let (interval, jitter) = (config.probe.interval, config.probe.jitter);
    let app = c.upstream.as_ref().map(|uri| Spec {
        name: "app",
        target: Target::Readiness(uri.clone()),
        timeout: c.upstream_timeout,
        failure_threshold: c.upstream_failure_threshold,
        critical: true,
        interval,
        jitter,
    });
    let otlp = c.otlp.as_ref().map(|exporter| Spec {
        name: "otlp",
        target: Target::Otlp(exporter.clone()),
        timeout: config.probe.attempt_timeout,
        failure_threshold: 1,
        critical: false,
        interval,
        jitter,
    });
    app.into_iter()
        .chain(otlp)
        .map(|spec| {
            let (tx, state) = watch::channel(CheckState::default());
            metrics
                .checks
                .add_check(spec.name, PollReason::ALL.map(PollReason::as_str));
            let check = SideCheck {
                name: spec.name,
                critical: spec.critical,
                state,
            };
            tasks.spawn(run(spec, rng.clone(), metrics.clone(), tx));
            check
        })
        .collect()
}

/// Polls `spec.target` every interval (jittered; the first poll at a random offset) until
/// dropped.
pub async fn run(
    spec: Spec,
    mut rng: impl Jitter,
    metrics: Arc<Metrics>,
    tx: watch::Sender<CheckState>,
) {
    tokio::time::sleep(rng.first_offset(spec.interval, spec.jitter)).await;
    let name = spec.name;
    let mut logged: Option<Result<(), PollReason>> = None;
    loop {
        let result = check_once(&spec.target, spec.timeout).await;
        let now = result.as_ref().map(|_| ()).map_err(|f| f.reason);
        metrics
            .checks
            .record_poll(name, now.err().map(PollReason::as_str));
        if logged != Some(now) {
            match &result {
                Ok(()) => tracing::info!(check = name, "check passed"),
                Err(f) => {
                    tracing::warn!(check = name, reason = f.reason.as_str(), detail = %f.text, "check failed")
                }
            }
            logged = Some(now);
        }
        tx.send_modify(|s| {
            if result.is_ok() {
                s.consecutive_failures = 0;
                s.ok = true;
            } else {
                s.consecutive_failures += 1;
                if s.consecutive_failures >= spec.failure_threshold || s.last.is_none() {
                    s.ok = false;
                }
            }
            s.last = Some(result);
        });
        metrics.checks.set_up(name, tx.borrow().ok);
        tokio::time::sleep(rng.spread(spec.interval, spec.jitter)).await;
    }
}

/// One poll of `target`, bounded by `timeout` (what `diagnose` uses too).
pub async fn check_once(target: &Target, timeout: Duration) -> Result<(), Failure> {
    match tokio::time::timeout(timeout, poll(target)).await {
        Ok(r) => r,
        Err(_) => Err(Failure::new(
            PollReason::Timeout,
            format!("no answer within {timeout:?}"),
        )),
    }
}

async fn poll(target: &Target) -> Result<(), Failure> {
    match target {
        Target::Readiness(uri) => {
            let req = hyper::Request::get(uri.clone())
                .header(HOST, authority(uri))
                .header(
                    "user-agent",
                    concat!("redis-probe/", env!("CARGO_PKG_VERSION")),
                )
                .body(Empty::<Bytes>::new())
                .map_err(other)?;
            let status = http1(uri, req).await?;
            if status.is_success() {
                Ok(())
            } else {
                Err(Failure::new(
                    PollReason::HttpStatus,
                    status.as_u16().to_string(),
                ))
            }
        }
        Target::Otlp(e) => {
            let uri: Uri = e.url.parse().map_err(|_| {
                Failure::new(PollReason::Other, format!("bad URL {}", e.shown_url()))
            })?;
            match e.protocol {
                Protocol::HttpProtobuf | Protocol::HttpJson => {
                    let (ct, body) = match e.protocol {
                        Protocol::HttpJson => ("application/json", Bytes::from_static(b"{}")),
                        _ => ("application/x-protobuf", Bytes::new()),
                    };
                    let req = hyper::Request::post(uri.clone())
                        .header(HOST, authority(&uri))
                        .header(CONTENT_TYPE, ct)
                        .body(Full::new(body))
                        .map_err(other)?;
                    let status = http1(&uri, req).await?;
                    if status.is_success() {
                        Ok(())
                    } else {
                        Err(Failure::new(
                            PollReason::HttpStatus,
                            format!("{} from {}", status.as_u16(), e.shown_url()),
                        ))
                    }
                }
                Protocol::Grpc => grpc_export(&uri).await,
            }
        }
    }
}

fn authority(uri: &Uri) -> String {
    uri.authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default()
}

fn other(e: impl std::fmt::Display) -> Failure {
    Failure::new(PollReason::Other, e.to_string())
}

fn io_failure(e: &std::io::Error) -> Failure {
    use std::io::ErrorKind;
    let reason = match e.kind() {
        ErrorKind::ConnectionRefused => PollReason::ConnectionRefused,
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => PollReason::ConnectionReset,
        ErrorKind::TimedOut => PollReason::Timeout,
        _ if e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) => PollReason::Tls,
        _ => PollReason::Other,
    };
    Failure::new(reason, e.to_string())
}

fn hyper_failure(e: hyper::Error) -> Failure {
    let io = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<std::io::Error>());
    match io {
        Some(io) => io_failure(io),
        None => other(e),
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// TCP, and TLS with the system roots for `https`.
async fn connect(uri: &Uri) -> Result<Box<dyn Io>, Failure> {
    let host = uri
        .host()
        .ok_or_else(|| other("URL without a host"))?
        .trim_matches(['[', ']'])
        .to_string();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| io_failure(&e))?;
    if !https {
        return Ok(Box::new(tcp));
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(crate::probe::tls::system_roots())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host).map_err(other)?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| Failure::new(PollReason::Tls, e.to_string()))?;
    Ok(Box::new(tls))
}

/// One HTTP/1.1 request on a fresh connection; the body is read up to [`MAX_BODY`] and dropped.
async fn http1<B>(uri: &Uri, req: hyper::Request<B>) -> Result<hyper::StatusCode, Failure>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = connect(uri).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(hyper_failure)?;
    let driver = tokio::spawn(conn);
    let rsp = sender.send_request(req).await.map_err(hyper_failure);
    let status = match rsp {
        Ok(rsp) => {
            let status = rsp.status();
            let _ = http_body_util::Limited::new(rsp.into_body(), MAX_BODY)
                .collect()
                .await;
            Ok(status)
        }
        Err(f) => Err(f),
    };
    driver.abort();
    status
}

/// An empty OTLP/gRPC `MetricsService/Export` over HTTP/2: the 5-byte gRPC frame of an empty
/// message. Success is `grpc-status: 0`.
async fn grpc_export(uri: &Uri) -> Result<(), Failure> {
    let io = connect(uri).await?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(hyper_failure)?;
    let driver = tokio::spawn(conn);
    let scheme = uri.scheme_str().unwrap_or("http");
    let target = format!(
        "{scheme}://{}/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        authority(uri)
    );
    let req = hyper::Request::post(target)
        .header(CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .map_err(other)?;
    let result = async {
        let rsp = sender.send_request(req).await.map_err(hyper_failure)?;
        if !rsp.status().is_success() {
            return Err(Failure::new(
                PollReason::HttpStatus,
                format!("HTTP {} on gRPC", rsp.status().as_u16()),
            ));
        }
        let header_status = rsp.headers().get("grpc-status").cloned();
        let collected = http_body_util::Limited::new(rsp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(other)?;
        let grpc_status = header_status.or_else(|| {
            collected
                .trailers()
                .and_then(|t| t.get("grpc-status").cloned())
        });
        match grpc_status.as_ref().and_then(|v| v.to_str().ok()) {
            Some("0") => Ok(()),
            Some(code) => Err(Failure::new(
                PollReason::HttpStatus,
                format!("grpc-status {code}"),
            )),
            None => Err(other("no grpc-status in the answer")),
        }
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side_check(critical: bool, last: Option<Result<(), Failure>>) -> SideCheck {
        let (_tx, state) = watch::channel(CheckState {
            last,
            ..CheckState::default()
        });
        SideCheck {
            name: "otlp",
            critical,
            state,
        }
    }

    #[test]
    fn before_the_first_poll() {
        let gating = side_check(true, None);
        assert_eq!(gating.status(), Err("not checked yet".into()));
        let informative = side_check(false, None);
        assert!(informative.pending());
        assert_eq!(informative.status(), Ok(()));
        let polled = side_check(false, Some(Ok(())));
        assert!(!polled.pending());
    }
}
