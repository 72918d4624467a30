//! Inspects a node's TLS certificate with a handshake of its own: protocol, subject, names,
//! expiry, and whether it verifies against the configured CA and server name.
//!
//! redis-rs does not expose the peer certificate, so `diagnose` and the certificate-expiry
//! metric open one short TLS connection per node (no AUTH, no command) for this.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use serde::Serialize;
use tokio::net::TcpStream;

use crate::config::{HostPort, TlsConfig};

/// Installs rustls's ring provider as the process default, once; later calls do nothing.
/// redis-rs brings rustls without a provider; with none (or two) installed, building a TLS
/// client panics inside a tokio worker and surfaces as an unrelated-looking connection error.
/// Called wherever a TLS client is built: [`super::RedisProbe::new`], [`inspect`],
/// [`system_roots`].
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The system's trust store, read and parsed once per process (it is a file of a few hundred
/// certificates; reading it is blocking I/O).
pub fn system_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            install_crypto_provider();
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            Arc::new(roots)
        })
        .clone()
}

/// Why no server certificate can verify, when that is known before any handshake: TLS is on
/// with no CA file, and the system trust store holds no certificate (an image without a CA
/// bundle). Logged at start, counted as `redis_probe_config_warning{kind="no_trust_store"}`
/// and a `diagnose` finding, so that every check failing as `tls` has its cause named.
pub fn trust_store_problem(tls: &TlsConfig) -> Option<String> {
    if tls.ca_pem.is_some() || !system_roots().is_empty() {
        return None;
    }
    Some(
        "TLS is on without REDIS_TLS_CA_FILE and the system trust store holds no certificate \
         (SSL_CERT_FILE, SSL_CERT_DIR, /etc/ssl/certs): no server certificate can verify; \
         mount a CA bundle or set REDIS_TLS_CA_FILE"
            .into(),
    )
}

/// What the handshake showed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CertInfo {
    pub protocol: String,
    pub subject: String,
    pub names: Vec<String>,
    /// Unix time the certificate expires.
    pub not_after: i64,
    pub days_left: i64,
    /// Verified against the configured CA (or the system roots) and the server name.
    pub verified: bool,
    /// Why verification failed.
    pub verify_error: Option<String>,
}

/// When the client certificate (mutual TLS) expires, as Unix time: read from its file as it is
/// now (it may have been rotated since start-up), else from the configuration.
pub fn client_cert_expiry(tls: &TlsConfig) -> Option<i64> {
    let pem = match &tls.files.cert {
        Some(path) => std::fs::read(path).ok()?,
        None => tls.client.as_ref()?.cert_pem.clone(),
    };
    let der = CertificateDer::pem_slice_iter(&pem).find_map(Result::ok)?;
    let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(x509.validity().not_after.timestamp())
}

/// Connects to `addr` and reads its certificate. `Err` when no handshake completed at all.
pub async fn inspect(
    addr: &HostPort,
    tls: &TlsConfig,
    timeout: Duration,
) -> Result<CertInfo, String> {
    install_crypto_provider();
    let name = tls.server_name.clone().unwrap_or_else(|| addr.host.clone());
    let server_name =
        ServerName::try_from(name.clone()).map_err(|e| format!("server name {name}: {e}"))?;
    let verified = tokio::time::timeout(
        timeout,
        handshake(addr, verifying(tls)?, server_name.clone()),
    )
    .await;
    let (info, verify_error) = match verified {
        Ok(Ok(info)) => (info, None),
        Ok(Err(e)) => {
            // Read the certificate anyway, to say what it is and when it expires.
            let any = tokio::time::timeout(timeout, handshake(addr, inspecting(tls)?, server_name))
                .await
                .map_err(|_| "TLS handshake timed out".to_string())??;
            (any, Some(e))
        }
        Err(_) => return Err("TLS handshake timed out".into()),
    };
    Ok(CertInfo {
        verified: verify_error.is_none(),
        verify_error,
        ..info
    })
}

fn roots(tls: &TlsConfig) -> Arc<rustls::RootCertStore> {
    match &tls.ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(
                CertificateDer::pem_slice_iter(pem).filter_map(Result::ok),
            );
            Arc::new(roots)
        }
        None => system_roots(),
    }
}

fn with_client_auth(
    builder: rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>,
    tls: &TlsConfig,
) -> Result<ClientConfig, String> {
    match &tls.client {
        Some(client) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(&client.cert_pem)
                    .filter_map(Result::ok)
                    .collect();
            let key = PrivateKeyDer::from_pem_slice(&client.key_pem)
                .map_err(|e| format!("client key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// The client configuration every connection to the nodes uses: the configured CA (or the
/// system roots, parsed once per process) and the client certificate when one is set.
pub fn client_config(tls: &TlsConfig) -> Result<Arc<ClientConfig>, String> {
    install_crypto_provider();
    verifying(tls).map(Arc::new)
}

fn verifying(tls: &TlsConfig) -> Result<ClientConfig, String> {
    with_client_auth(
        ClientConfig::builder().with_root_certificates(roots(tls)),
        tls,
    )
}

fn inspecting(tls: &TlsConfig) -> Result<ClientConfig, String> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let builder = ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)));
    with_client_auth(builder, tls)
}

async fn handshake(
    addr: &HostPort,
    config: ClientConfig,
    name: ServerName<'static>,
) -> Result<CertInfo, String> {
    let addrs = super::resolve(addr)
        .await
        .map_err(|e| format!("DNS: {e}"))?;
    let tcp = TcpStream::connect(&addrs[..])
        .await
        .map_err(|e| format!("TCP: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, conn) = stream.get_ref();
    let protocol = conn
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no certificate")?;
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("certificate: {e}"))?;
    let not_after = x509.validity().not_after.timestamp();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut names = vec![];
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                    4 => {
                        names.push(std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string())
                    }
                    16 => {
                        let b: [u8; 16] = (*ip).try_into().unwrap_or([0; 16]);
                        names.push(std::net::Ipv6Addr::from(b).to_string())
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        protocol,
        subject: x509.subject().to_string(),
        names,
        not_after,
        days_left: (not_after - now).div_euclid(86_400),
        verified: true,
        verify_error: None,
    })
}

/// Accepts any certificate, so an unverifiable one can still be described. Used only after
/// a verifying handshake failed, and only to read the certificate.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
