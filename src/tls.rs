//! `wss://`: the WebSocket to the core over TLS (feature `tls`, on by default).
//!
//! rustls with the ring provider (the one webrtc-rs's DTLS already uses). The core's certificate
//! is checked against the system's roots (read once per process with `rustls-native-certs`)
//! and any roots the application adds with [`TlsOptions::add_root_pem`]; an application with
//! needs of its own (client certificates, pinning) passes a whole `rustls::ClientConfig` with
//! [`TlsOptions::with_client_config`].
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use callme::{ConnectOptions, Session, TlsOptions};
//!
//! let ca = std::fs::read("ca.pem")?;
//! let options = ConnectOptions::default().with_tls(TlsOptions::new().add_root_pem(&ca)?);
//! let session = Session::connect_with_options("wss://core.example:8443/ws", &options).await?;
//! # Ok(()) }
//! ```

use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::WebSocketStream;

/// How the SDK trusts the core's certificate on `wss://`.
///
/// The default trusts the system's roots. Roots added with [`TlsOptions::add_root_pem`] are
/// trusted beside them (or alone, after [`TlsOptions::without_system_roots`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TlsOptions {
    system_roots: bool,
    added_roots: Vec<CertificateDer<'static>>,
    client_config: Option<Arc<ClientConfig>>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions { system_roots: true, added_roots: Vec::new(), client_config: None }
    }
}

/// A root certificate that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The PEM text holds no `CERTIFICATE` block, or one that does not decode.
    #[error("root certificate PEM: {reason}")]
    Pem {
        /// What is wrong with the text.
        reason: String,
    },
    /// A certificate was read but rustls does not accept it as a trust anchor.
    #[error("root certificate {index} of the PEM text: {reason}")]
    Rejected {
        /// Which certificate of the text, counting from 0.
        index: usize,
        /// Why rustls refused it.
        reason: String,
    },
}

impl TlsOptions {
    /// The system's roots only (the same as `TlsOptions::default()`).
    pub fn new() -> Self {
        TlsOptions::default()
    }

    /// Trusts every certificate in `pem` (one or more `-----BEGIN CERTIFICATE-----` blocks) as
    /// a root, beside the others. Fails, naming the problem, on text with no certificate, a
    /// block that does not decode, or a certificate rustls cannot use as a trust anchor.
    pub fn add_root_pem(mut self, pem: &[u8]) -> Result<Self, TlsError> {
        let certs =
            CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| TlsError::Pem { reason: e.to_string() })?;
        if certs.is_empty() {
            return Err(TlsError::Pem { reason: "no CERTIFICATE block found".into() });
        }
        for (index, cert) in certs.iter().enumerate() {
            RootCertStore::empty().add(cert.clone()).map_err(|e| TlsError::Rejected { index, reason: e.to_string() })?;
        }
        self.added_roots.extend(certs);
        Ok(self)
    }

    /// Trusts only the roots added with [`TlsOptions::add_root_pem`], not the system's.
    pub fn without_system_roots(mut self) -> Self {
        self.system_roots = false;
        self
    }

    /// Uses this rustls configuration as it is; the roots above are then not used. The SDK sets
    /// no ALPN and needs none.
    pub fn with_client_config(mut self, config: Arc<ClientConfig>) -> Self {
        self.client_config = Some(config);
        self
    }

    /// The rustls configuration these options make.
    fn client_config(&self) -> Result<Arc<ClientConfig>, String> {
        if let Some(c) = &self.client_config {
            return Ok(c.clone());
        }
        let mut roots = RootCertStore::empty();
        if self.system_roots {
            roots.roots.extend(system_roots().roots.iter().cloned());
        }
        for cert in &self.added_roots {
            roots.add(cert.clone()).map_err(|e| format!("root certificate: {e}"))?;
        }
        if roots.is_empty() {
            return Err("no trusted root certificates: the system has none readable and none were added (TlsOptions::add_root_pem)".into());
        }
        let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// The system's roots, read once per process. Certificates that cannot be read are left out.
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        if !found.errors.is_empty() {
            tracing::debug!(errors = ?found.errors, "some system root certificates could not be read");
        }
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "system root certificates");
        roots
    })
}

/// Opens `request` (a `wss://` URL) over TCP, TLS and the WebSocket handshake. The error is a
/// sentence naming what failed: the TCP connection, the certificate (with rustls's reason), or
/// the WebSocket upgrade.
pub(crate) async fn open(request: Request, options: &TlsOptions) -> Result<WebSocketStream<TlsStream<TcpStream>>, String> {
    let uri = request.uri().clone();
    let host = uri.host().map(|h| h.trim_matches(|c| c == '[' || c == ']')).ok_or("the URL has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let server_name = ServerName::try_from(host.clone()).map_err(|e| format!("host {host:?} is not a TLS server name: {e}"))?;
    let config = options.client_config()?;
    let tcp = TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("{uri}: TCP: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio_rustls::TlsConnector::from(config).connect(server_name, tcp).await.map_err(|e| describe_handshake_error(&uri, e))?;
    let (ws, _response) = tokio_tungstenite::client_async_with_config(request, tls, None).await.map_err(|e| format!("{uri}: {e}"))?;
    Ok(ws)
}

/// A failed TLS handshake in words; a certificate the roots do not vouch for says how to add one.
fn describe_handshake_error(uri: &impl std::fmt::Display, e: std::io::Error) -> String {
    let hint = match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(_)) => {
            " (the core's certificate is not trusted: add the root that signed it with TlsOptions::add_root_pem)"
        }
        _ => "",
    };
    format!("{uri}: TLS handshake: {e}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pem_without_a_certificate_is_refused_with_the_reason() {
        let e = TlsOptions::new().add_root_pem(b"hello").unwrap_err();
        assert_eq!(e, TlsError::Pem { reason: "no CERTIFICATE block found".into() });
        let broken = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(TlsOptions::new().add_root_pem(broken), Err(TlsError::Pem { .. })));
    }

    #[test]
    fn a_certificate_that_is_not_der_is_rejected_by_index() {
        // Valid base64, but not a certificate.
        let pem = b"-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
        let e = TlsOptions::new().add_root_pem(pem).unwrap_err();
        assert!(matches!(e, TlsError::Rejected { index: 0, .. }), "{e}");
    }

    #[test]
    fn no_roots_at_all_is_a_clear_error() {
        let e = TlsOptions::new().without_system_roots().client_config().unwrap_err();
        assert!(e.contains("no trusted root certificates"), "{e}");
    }
}
