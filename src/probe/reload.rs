//! Rotation: a password file or TLS file that changed since the last check is taken up before
//! the next one, and every connection is made again with it.

use std::path::PathBuf;

use super::RedisProbe;
use super::material::Watched;
use crate::config::parse::{CertFile, KeyFile, Parser};
use crate::config::{PasswordSource, read_password_file};

/// Which TLS file a [`Watched`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TlsPart {
    Ca,
    Cert,
    Key,
}

impl RedisProbe {
    /// Takes up a password file or TLS file that changed since the last check: the next
    /// connections use the new material, and every connection is made again with it (so a
    /// revoked token or a rotated client certificate is noticed now, while old connections
    /// would still pass).
    pub(super) fn reload_changed_files(&mut self) {
        if self.password_file.as_mut().is_some_and(Watched::changed) {
            self.reload_password();
        }
        let changed: Vec<(TlsPart, PathBuf)> = self
            .tls_files
            .iter_mut()
            .filter_map(|(part, w)| w.changed().then(|| (*part, w.path().to_path_buf())))
            .collect();
        let Some(tls) = self.settings.tls.as_mut() else {
            return;
        };
        let mut reloaded = false;
        for (part, path) in changed {
            let text = path.to_string_lossy().into_owned();
            let read = match part {
                TlsPart::Key => KeyFile::check(text),
                TlsPart::Ca | TlsPart::Cert => CertFile::check(text),
            };
            match (read, part, tls.client.as_mut()) {
                (Ok(f), TlsPart::Ca, _) => tls.ca_pem = Some(f.pem),
                (Ok(f), TlsPart::Cert, Some(c)) => c.cert_pem = f.pem,
                (Ok(f), TlsPart::Key, Some(c)) => c.key_pem = f.pem,
                (Ok(_), _, None) => continue,
                // Half-written during a rotation: keep what works until the next change.
                (Err(e), _, _) => {
                    tracing::warn!(file = %path.display(), problem = %e.what, "TLS file changed but cannot be used; keeping the previous one");
                    continue;
                }
            }
            reloaded = true;
            tracing::info!(file = %path.display(), "TLS file changed; reconnecting with it");
        }
        if reloaded {
            match self.settings.dialer() {
                Ok(d) => self.dialer = d,
                Err(e) => {
                    tracing::warn!(problem = %e, "TLS files changed but do not make a TLS client; keeping the previous one");
                    return;
                }
            }
            self.conns.clear();
        }
    }

    /// Re-reads the password file; drops every connection when the token changed.
    pub(super) fn reload_password(&mut self) {
        if let PasswordSource::File(path) = &self.settings.password
            && let Ok(new) = read_password_file(path)
            && self.password.as_ref() != Some(&new)
        {
            tracing::info!(file = %path.display(), "password file changed; reconnecting with the new token");
            self.password = Some(new);
            self.conns.clear();
        }
    }
}
