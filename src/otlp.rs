//! The OpenTelemetry exporter settings the app shares with the sidecar: where metrics go, over
//! which protocol, and the mistakes that lose them silently.
//!
//! The incident's second fault: `OTEL_EXPORTER_OTLP_ENDPOINT` named the gRPC port 4317 with
//! `OTEL_EXPORTER_OTLP_PROTOCOL=grpc` while the code exported over HTTP to 4318, and metrics
//! were lost for a while before anyone noticed. These checks find such settings at start-up.

use std::fmt;

/// The OTLP protocols of the specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Protocol> {
        match s.trim() {
            "grpc" => Some(Protocol::Grpc),
            "http/protobuf" => Some(Protocol::HttpProtobuf),
            "http/json" => Some(Protocol::HttpJson),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
            Protocol::HttpJson => "http/json",
        }
    }
}

/// A kind of questionable setting; its label is the metric label of
/// `redis_probe_config_warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LintKind {
    GrpcPortWithHttp,
    HttpPortWithGrpc,
    MissingScheme,
    HttpsOnPlaintextPort,
    UnknownProtocol,
}

impl LintKind {
    /// Every kind, exported at 0 when absent.
    pub const ALL: [LintKind; 5] = [
        LintKind::GrpcPortWithHttp,
        LintKind::HttpPortWithGrpc,
        LintKind::MissingScheme,
        LintKind::HttpsOnPlaintextPort,
        LintKind::UnknownProtocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LintKind::GrpcPortWithHttp => "grpc_port_with_http",
            LintKind::HttpPortWithGrpc => "http_port_with_grpc",
            LintKind::MissingScheme => "missing_scheme",
            LintKind::HttpsOnPlaintextPort => "https_on_plaintext_port",
            LintKind::UnknownProtocol => "unknown_protocol",
        }
    }
}

/// A questionable combination of settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lint {
    pub kind: LintKind,
    pub message: String,
}

impl fmt::Display for Lint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.kind.as_str())
    }
}

/// The effective metrics exporter: the signal-specific variables win over the general ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exporter {
    /// The URL to send to (for HTTP, the full `/v1/metrics` URL).
    pub url: String,
    pub protocol: Protocol,
    /// The variable the endpoint came from, for messages.
    pub endpoint_var: &'static str,
}

impl Exporter {
    /// The URL without user info or query, for messages and bodies.
    pub fn shown_url(&self) -> String {
        redact_url(&self.url)
    }
}

/// `url` with any user info and query replaced by `<redacted>`: an endpoint can carry a token
/// in either, and it is shown in logs, `/readyz` and `diagnose`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (format!("{s}://"), r),
        None => (String::new(), url),
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((b, _)) => (b, "?<redacted>"),
        None => (rest, ""),
    };
    let authority_end = before_query.find('/').unwrap_or(before_query.len());
    let (authority, path) = before_query.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("<redacted>@{host}"),
        None => authority.to_string(),
    };
    format!("{scheme}{authority}{path}{query}")
}

/// The four standard variables, as set.
#[derive(Debug, Clone, Copy, Default)]
pub struct Variables<'a> {
    pub endpoint: Option<&'a str>,
    pub metrics_endpoint: Option<&'a str>,
    pub protocol: Option<&'a str>,
    pub metrics_protocol: Option<&'a str>,
}

/// Reads the four standard variables. `None` when no endpoint is set (nothing to check).
pub fn exporter(vars: &Variables<'_>) -> (Option<Exporter>, Vec<Lint>) {
    let (proto_var, proto_raw) = match (vars.metrics_protocol, vars.protocol) {
        (Some(p), _) => ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", Some(p)),
        (None, p) => ("OTEL_EXPORTER_OTLP_PROTOCOL", p),
    };
    // The specification's default is http/protobuf.
    let protocol = match proto_raw.map(|raw| (raw, Protocol::parse(raw))) {
        None => Protocol::HttpProtobuf,
        Some((_, Some(p))) => p,
        Some((raw, None)) => {
            let message = format!("{proto_var}={raw}: expected grpc, http/protobuf or http/json");
            let kind = LintKind::UnknownProtocol;
            return (None, vec![Lint { kind, message }]);
        }
    };
    let (endpoint_var, raw, signal_specific) = match (vars.metrics_endpoint, vars.endpoint) {
        (Some(e), _) => ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", e.trim(), true),
        (None, Some(e)) => ("OTEL_EXPORTER_OTLP_ENDPOINT", e.trim(), false),
        (None, None) => return (None, vec![]),
    };
    let endpoint = Endpoint::split(raw);
    let shown = format!(
        "{endpoint_var}={} with {proto_var}={}",
        redact_url(raw),
        protocol.as_str()
    );
    let lints = lint(&endpoint, protocol, &shown);
    let with_scheme = match endpoint.scheme {
        Some(_) => raw.to_string(),
        None => format!("http://{raw}"),
    };
    let url = match protocol {
        // The general endpoint gets the signal path appended; the signal-specific one is used
        // as is (the specification's rule).
        Protocol::HttpProtobuf | Protocol::HttpJson if !signal_specific => {
            format!("{}/v1/metrics", with_scheme.trim_end_matches('/'))
        }
        _ => with_scheme,
    };
    let exporter = Exporter {
        url,
        protocol,
        endpoint_var,
    };
    (Some(exporter), lints)
}

/// The parts of an endpoint the lint looks at. Split by hand rather than parsed as a URL: an
/// endpoint without a scheme (`collector:4317`, valid for gRPC) is not a URL.
struct Endpoint {
    scheme: Option<String>,
    port: Option<u16>,
}

impl Endpoint {
    fn split(raw: &str) -> Self {
        let scheme = raw.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        let rest = raw.split_once("://").map_or(raw, |(_, r)| r);
        let authority = rest.split('/').next().unwrap_or("");
        let port = authority
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok());
        Endpoint { scheme, port }
    }
}

fn lint(e: &Endpoint, protocol: Protocol, shown: &str) -> Vec<Lint> {
    let mut lints = vec![];
    let mut push = |kind, message: String| lints.push(Lint { kind, message });
    match (e.port, protocol) {
        (Some(4317), Protocol::HttpProtobuf | Protocol::HttpJson) => push(
            LintKind::GrpcPortWithHttp,
            format!("{shown}: 4317 is the OTLP/gRPC port; OTLP/HTTP listens on 4318"),
        ),
        (Some(4318), Protocol::Grpc) => push(
            LintKind::HttpPortWithGrpc,
            format!("{shown}: 4318 is the OTLP/HTTP port; OTLP/gRPC listens on 4317"),
        ),
        _ => {}
    }
    if e.scheme.is_none() && protocol != Protocol::Grpc {
        push(
            LintKind::MissingScheme,
            format!("{shown}: an OTLP/HTTP endpoint needs a scheme (http:// or https://)"),
        );
    }
    if e.scheme.as_deref() == Some("https") && matches!(e.port, Some(4317 | 4318)) {
        push(
            LintKind::HttpsOnPlaintextPort,
            format!(
                "{shown}: https on {}, which collectors serve in plain text by default",
                e.port.unwrap_or(0)
            ),
        );
    }
    lints
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(
        e: Option<&str>,
        me: Option<&str>,
        p: Option<&str>,
        mp: Option<&str>,
    ) -> Vec<&'static str> {
        exporter(&vars(e, me, p, mp))
            .1
            .iter()
            .map(|f| f.kind.as_str())
            .collect()
    }

    fn vars<'a>(
        endpoint: Option<&'a str>,
        metrics_endpoint: Option<&'a str>,
        protocol: Option<&'a str>,
        metrics_protocol: Option<&'a str>,
    ) -> Variables<'a> {
        Variables {
            endpoint,
            metrics_endpoint,
            protocol,
            metrics_protocol,
        }
    }

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(
            redact_url("https://user:tok3n@collector:4318/v1/metrics?api_key=tok3n"),
            "https://<redacted>@collector:4318/v1/metrics?<redacted>"
        );
        assert_eq!(redact_url("collector:4317"), "collector:4317");
        assert_eq!(redact_url("http://c:4318/a@b"), "http://c:4318/a@b");
        let (_, lints) = exporter(&vars(
            Some("user:tok3n@collector:4318"),
            None,
            Some("http/protobuf"),
            None,
        ));
        assert!(!lints.is_empty());
        assert!(
            lints.iter().all(|l| !l.message.contains("tok3n")),
            "{lints:?}"
        );
    }

    #[test]
    fn the_incidents_settings() {
        // Configured gRPC on 4317 while the code sent HTTP to 4318: the variables themselves are
        // consistent, so the lint says nothing; the reachability check with the configured
        // protocol is what tells. The opposite mistakes are caught here:
        assert!(
            kinds(
                Some("otel-collector-collector.otel-collector:4317"),
                None,
                Some("grpc"),
                None
            )
            .is_empty()
        );
        assert_eq!(
            kinds(
                Some("http://otel-collector-collector.otel-collector.svc.cluster.local:4317"),
                None,
                Some("http/protobuf"),
                None
            ),
            vec!["grpc_port_with_http"]
        );
        assert_eq!(
            kinds(Some("http://collector:4318"), None, Some("grpc"), None),
            vec!["http_port_with_grpc"]
        );
    }

    #[test]
    fn missing_scheme_https_and_unknown_protocol() {
        assert_eq!(
            kinds(Some("collector:4318"), None, Some("http/protobuf"), None),
            vec!["missing_scheme"]
        );
        assert_eq!(
            kinds(Some("https://collector:4318"), None, None, None),
            vec!["https_on_plaintext_port"]
        );
        assert_eq!(
            kinds(Some("http://c:4318"), None, Some("thrift"), None),
            vec!["unknown_protocol"]
        );
        assert!(kinds(Some("https://collector.example.com"), None, None, None).is_empty());
        assert!(kinds(None, None, Some("grpc"), None).is_empty());
    }

    #[test]
    fn signal_specific_variables_win_and_urls_follow_the_spec() {
        let (e, f) = exporter(&vars(Some("http://a:4318"), None, None, None));
        assert!(f.is_empty());
        let e = e.unwrap();
        assert_eq!(
            (e.url.as_str(), e.protocol),
            ("http://a:4318/v1/metrics", Protocol::HttpProtobuf)
        );
        let (e, _) = exporter(&vars(
            Some("http://a:4318"),
            Some("http://b:4318/custom"),
            Some("grpc"),
            Some("http/json"),
        ));
        let e = e.unwrap();
        assert_eq!(
            (e.url.as_str(), e.protocol, e.endpoint_var),
            (
                "http://b:4318/custom",
                Protocol::HttpJson,
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
            )
        );
        let (e, _) = exporter(&vars(Some("collector:4317"), None, Some("grpc"), None));
        assert_eq!(e.unwrap().url, "http://collector:4317");
    }
}
