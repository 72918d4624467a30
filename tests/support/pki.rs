//! Certificates for the test servers: a CA and a node certificate per deployment.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// Which names the node certificates carry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CertNames {
    /// `127.0.0.1` and `localhost`: nodes verify by the address they are reached at.
    Loopback,
    /// Only `redis.test`: nodes announced by IP with a certificate for a name, which needs
    /// `REDIS_TLS_SERVER_NAME`.
    HostOnly,
    /// Only `localhost`, no IP: the node is verified by the host name it announces.
    Localhost,
}

pub const HOST_ONLY_NAME: &str = "redis.test";

/// A CA and a server certificate signed by it, written as PEM files.
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn generate(dir: &Path, names: CertNames, prefix: &str) -> Pki {
        Self::generate_valid_for(dir, names, prefix, None)
    }

    /// As [`Pki::generate`], the node certificate expiring in `days` days when given.
    pub fn generate_valid_for(
        dir: &Path,
        names: CertNames,
        prefix: &str,
        days: Option<i64>,
    ) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("redis-probe test CA {prefix}"));
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();

        let sans = match names {
            // The wildcard names the nodes of `Options::host_names`, as ElastiCache's
            // certificate names every node of a cluster.
            CertNames::Loopback => vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
                "*.redis-probe.test".to_string(),
            ],
            CertNames::HostOnly => vec![HOST_ONLY_NAME.to_string()],
            CertNames::Localhost => vec!["localhost".to_string()],
        };
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(sans).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "redis node");
        // Nodes use the same certificate as clients of each other (replication, cluster bus).
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if let Some(days) = days {
            params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
            params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
        }
        let cert = params.signed_by(&key, &ca).unwrap();

        let pki = Pki {
            ca: dir.join(format!("{prefix}ca.pem")),
            cert: dir.join(format!("{prefix}node.pem")),
            key: dir.join(format!("{prefix}node.key")),
        };
        std::fs::write(&pki.ca, ca.pem()).unwrap();
        std::fs::write(&pki.cert, cert.pem()).unwrap();
        std::fs::write(&pki.key, key.serialize_pem()).unwrap();
        pki
    }
}
