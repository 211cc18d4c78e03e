//! TLS on the listener (rustls). The certificate and key are re-read when their files change,
//! checked at each handshake, so a renewed certificate is served without a restart; a broken
//! renewal — unreadable, a key that does not match, or a certificate outside its validity
//! period — keeps the previous certificate and is logged. Callgate does not start with an
//! expired or not yet valid certificate, and warns when the one it loads expires within 14 days.

use rustls::ServerConfig;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use x509_cert::der::Decode;

type Stamp = Option<(SystemTime, u64)>;

fn stamp(p: &Path) -> Stamp {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// How soon before its expiry a loaded certificate is warned about.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// Checks that the leaf certificate is valid now (clients would refuse it otherwise: better
/// to keep serving the previous one, or not to start); warns when it expires soon.
fn check_validity(path: &Path, leaf: &[u8], now: SystemTime) -> Result<(), String> {
    // rustls serves what it can load; a certificate whose encoding this stricter reader
    // refuses is served unchecked rather than refused.
    let cert = match x509_cert::Certificate::from_der(leaf) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(cert = %path.display(), error = %e, "the TLS certificate's validity period cannot be read; not checked");
            return Ok(());
        }
    };
    let validity = &cert.tbs_certificate.validity;
    let (not_before, not_after) = (
        SystemTime::UNIX_EPOCH + validity.not_before.to_unix_duration(),
        SystemTime::UNIX_EPOCH + validity.not_after.to_unix_duration(),
    );
    if now < not_before {
        return Err(format!(
            "{}: the certificate is not valid before {}",
            path.display(),
            validity_time(not_before)
        ));
    }
    if now > not_after {
        return Err(format!(
            "{}: the certificate expired at {}",
            path.display(),
            validity_time(not_after)
        ));
    }
    if not_after.duration_since(now).unwrap_or_default() < EXPIRY_WARNING {
        tracing::warn!(cert = %path.display(), expires = %validity_time(not_after), "the TLS certificate expires within 14 days");
    }
    Ok(())
}

/// A validity time as RFC 3339 (UTC).
fn validity_time(t: SystemTime) -> String {
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    callgate_core::time::rfc3339(ms)
}

fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let certs = crate::http_client::read_certs(cert)?;
    let leaf = certs
        .first()
        .ok_or_else(|| format!("{}: no certificate", cert.display()))?;
    check_validity(cert, leaf, SystemTime::now())?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let signing = crate::http_client::crypto_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("private key: {e}"))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match()
        .map_err(|e| format!("certificate and key do not match: {e}"))?;
    Ok(Arc::new(ck))
}

/// How long after a failed reload the files are read again, changed or not (a renewal caught
/// half-written, or rewritten in place within one tick of the file system's clock).
const RETRY_FAILED: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    /// The files' stamps when last loaded successfully, the certificate, and when a failed
    /// reload may be tried again.
    state: Mutex<(Stamp, Stamp, Arc<CertifiedKey>, Option<std::time::Instant>)>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (c, k) = (stamp(&self.cert), stamp(&self.key));
        let retry_due = st.3.is_none_or(|at| std::time::Instant::now() >= at);
        if (c, k) != (st.0, st.1) && retry_due {
            match load(&self.cert, &self.key) {
                Ok(ck) => {
                    tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                    st.2 = ck;
                    st.0 = c;
                    st.1 = k;
                    st.3 = None;
                }
                // The stamps stay as they were: the files are read again a little later,
                // whether or not they change once more.
                Err(e) => {
                    tracing::error!(error = %e, "TLS certificate reload failed; serving the previous one");
                    st.3 = Some(std::time::Instant::now() + RETRY_FAILED);
                }
            }
        }
        Some(st.2.clone())
    }
}

/// A server config serving `cert`/`key`, HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let ck = load(cert, key)?;
    let resolver = Reloading {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        state: Mutex::new((stamp(cert), stamp(key), ck, None)),
    };
    let mut cfg = ServerConfig::builder_with_provider(crate::http_client::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
