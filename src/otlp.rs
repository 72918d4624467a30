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

/// A questionable combination of settings; `kind` is the metric label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: &'static str,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.kind)
    }
}

/// Every finding kind, exported at 0 when absent.
pub const FINDING_KINDS: [&str; 5] = [
    "grpc_port_with_http",
    "http_port_with_grpc",
    "missing_scheme",
    "https_on_plaintext_port",
    "unknown_protocol",
];

/// The effective metrics exporter: the signal-specific variables win over the general ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exporter {
    /// The URL to send to (for HTTP, the full `/v1/metrics` URL).
    pub url: String,
    pub protocol: Protocol,
    /// The variable the endpoint came from, for messages.
    pub endpoint_var: &'static str,
}

/// Reads the four standard variables. `None` when no endpoint is set (nothing to check).
pub fn exporter(
    endpoint: Option<&str>,
    metrics_endpoint: Option<&str>,
    protocol: Option<&str>,
    metrics_protocol: Option<&str>,
) -> (Option<Exporter>, Vec<Finding>) {
    let mut findings = vec![];
    let (proto_var, proto_raw) = match (metrics_protocol, protocol) {
        (Some(p), _) => ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", Some(p)),
        (None, Some(p)) => ("OTEL_EXPORTER_OTLP_PROTOCOL", Some(p)),
        (None, None) => ("OTEL_EXPORTER_OTLP_PROTOCOL", None),
    };
    // The specification's default is http/protobuf.
    let protocol = match proto_raw {
        None => Protocol::HttpProtobuf,
        Some(raw) => match Protocol::parse(raw) {
            Some(p) => p,
            None => {
                findings.push(Finding {
                    kind: "unknown_protocol",
                    message: format!(
                        "{proto_var}={raw}: expected grpc, http/protobuf or http/json"
                    ),
                });
                return (None, findings);
            }
        },
    };
    let (endpoint_var, raw, signal_specific) = match (metrics_endpoint, endpoint) {
        (Some(e), _) => ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", e, true),
        (None, Some(e)) => ("OTEL_EXPORTER_OTLP_ENDPOINT", e, false),
        (None, None) => return (None, findings),
    };
    let raw = raw.trim();
    let scheme = raw.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    let rest = raw.split_once("://").map_or(raw, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let port = authority
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok());
    let shown = format!(
        "{endpoint_var}={raw} with {proto_var}={}",
        protocol.as_str()
    );
    match (port, protocol) {
        (Some(4317), Protocol::HttpProtobuf | Protocol::HttpJson) => findings.push(Finding {
            kind: "grpc_port_with_http",
            message: format!("{shown}: 4317 is the OTLP/gRPC port; OTLP/HTTP listens on 4318"),
        }),
        (Some(4318), Protocol::Grpc) => findings.push(Finding {
            kind: "http_port_with_grpc",
            message: format!("{shown}: 4318 is the OTLP/HTTP port; OTLP/gRPC listens on 4317"),
        }),
        _ => {}
    }
    if scheme.is_none() && protocol != Protocol::Grpc {
        findings.push(Finding {
            kind: "missing_scheme",
            message: format!("{shown}: an OTLP/HTTP endpoint needs a scheme (http:// or https://)"),
        });
    }
    if scheme.as_deref() == Some("https") && matches!(port, Some(4317 | 4318)) {
        findings.push(Finding {
            kind: "https_on_plaintext_port",
            message: format!(
                "{shown}: https on {}, which collectors serve in plain text by default",
                port.unwrap_or(0)
            ),
        });
    }
    let with_scheme = match &scheme {
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
    (
        Some(Exporter {
            url,
            protocol,
            endpoint_var,
        }),
        findings,
    )
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
        exporter(e, me, p, mp).1.iter().map(|f| f.kind).collect()
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
        let (e, f) = exporter(Some("http://a:4318"), None, None, None);
        assert!(f.is_empty());
        let e = e.unwrap();
        assert_eq!(
            (e.url.as_str(), e.protocol),
            ("http://a:4318/v1/metrics", Protocol::HttpProtobuf)
        );
        let (e, _) = exporter(
            Some("http://a:4318"),
            Some("http://b:4318/custom"),
            Some("grpc"),
            Some("http/json"),
        );
        let e = e.unwrap();
        assert_eq!(
            (e.url.as_str(), e.protocol, e.endpoint_var),
            (
                "http://b:4318/custom",
                Protocol::HttpJson,
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
            )
        );
        let (e, _) = exporter(Some("collector:4317"), None, Some("grpc"), None);
        assert_eq!(e.unwrap().url, "http://collector:4317");
    }
}
