//! TLS for both kinds of connection (tokio-postgres and the replication
//! transport), with libpq's `sslmode` semantics, on rustls:
//!
//! | sslmode       | encrypts                 | verifies the chain | verifies the host name |
//! |---------------|--------------------------|--------------------|------------------------|
//! | `disable`     | no                       | –                  | –                      |
//! | `prefer`      | if the server offers TLS | no                 | no                     |
//! | `require`     | yes, or fail             | only with a root certificate (as libpq) | no |
//! | `verify-ca`   | yes, or fail             | yes                | no                     |
//! | `verify-full` | yes, or fail             | yes                | yes                    |
//!
//! `sslrootcert` names a PEM file of trusted roots (libpq's default is
//! `~/.postgresql/root.crt`) or `system` for the operating system's store.
//! Unix sockets never use TLS (as libpq).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme};

/// libpq's `sslmode`, as far as syncbridge supports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, without verification (libpq's default).
    #[default]
    Prefer,
    /// TLS or fail; verified as `verify-ca` only when a root certificate is given.
    Require,
    /// TLS, the server's chain verified against the root certificates.
    VerifyCa,
    /// As `verify-ca`, and the host name must match the certificate.
    VerifyFull,
}

impl SslMode {
    /// Parses a libpq `sslmode` value.
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            "allow" => {
                return Err("sslmode=allow is not supported (it tries clear text first); use prefer or require".into())
            }
            other => {
                return Err(format!(
                    "unknown sslmode {other:?}: expected disable, prefer, require, verify-ca or verify-full"
                ))
            }
        })
    }

    /// Whether the connection must be encrypted.
    pub fn requires_tls(self) -> bool {
        matches!(self, Self::Require | Self::VerifyCa | Self::VerifyFull)
    }

    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// Where trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file.
    File(PathBuf),
    /// The operating system's store (`sslrootcert=system`).
    System,
}

/// The TLS part of a connection string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// `sslmode`.
    pub mode: SslMode,
    /// `sslrootcert`, when given.
    pub root_cert: Option<RootCert>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The root certificate file is missing or unreadable.
    #[error("cannot read the root certificate file {path}: {reason} (hint: set sslrootcert=<file> or sslrootcert=system, or use sslmode=require to encrypt without verifying)")]
    RootCert {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn default_root_file() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".postgresql").join("root.crt"))
}

fn load_roots(root: &RootCert) -> Result<RootCertStore, TlsSetupError> {
    let mut store = RootCertStore::empty();
    match root {
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A malformed system certificate is skipped, as browsers do.
                let _ = store.add(cert);
            }
            if store.is_empty() {
                return Err(TlsSetupError::RootCert {
                    path: "system".into(),
                    reason: "the operating system's store holds no usable certificate".into(),
                });
            }
        }
        RootCert::File(path) => {
            let shown = path.display().to_string();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| TlsSetupError::RootCert { path: shown.clone(), reason: e.to_string() })?;
            for cert in certs {
                let cert = cert.map_err(|e| TlsSetupError::RootCert { path: shown.clone(), reason: e.to_string() })?;
                store.add(cert).map_err(|e| TlsSetupError::RootCert { path: shown.clone(), reason: e.to_string() })?;
            }
            if store.is_empty() {
                return Err(TlsSetupError::RootCert { path: shown, reason: "it holds no PEM certificate".into() });
            }
        }
    }
    Ok(store)
}

impl TlsOptions {
    /// The rustls client configuration these options ask for (also built for
    /// `disable`, where it is never used).
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
        let provider = provider();
        // libpq: under `require`, a root certificate (given, or the default
        // file when it exists) turns on chain verification.
        let root = match (&self.root_cert, self.mode) {
            (Some(r), _) => Some(r.clone()),
            (None, SslMode::VerifyCa | SslMode::VerifyFull) => {
                Some(RootCert::File(default_root_file().unwrap_or_else(|| PathBuf::from("~/.postgresql/root.crt"))))
            }
            (None, SslMode::Require) => default_root_file().filter(|p| p.exists()).map(RootCert::File),
            (None, _) => None,
        };
        let verify_chain = match self.mode {
            SslMode::Disable | SslMode::Prefer => false,
            SslMode::Require => root.is_some(),
            SslMode::VerifyCa | SslMode::VerifyFull => true,
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::Config(e.to_string()))?;
        let verifier: Arc<dyn ServerCertVerifier> = if verify_chain {
            let roots = load_roots(root.as_ref().expect("a root when verifying"))?;
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| TlsSetupError::Config(e.to_string()))?;
            if self.mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        } else {
            Arc::new(NoVerification(provider))
        };
        let config = builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// The connector for tokio-postgres connections.
    pub fn make_connect(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, TlsSetupError> {
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new((*self.client_config()?).clone()))
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a root: encrypted, not authenticated
/// (libpq's behaviour; the handshake signatures are still checked).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmodes_parse_as_libpq_spells_them() {
        for m in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
            assert_eq!(SslMode::parse(m).unwrap().as_str(), m);
        }
        assert!(SslMode::parse("allow").unwrap_err().contains("not supported"));
        assert!(SslMode::parse("Require").unwrap_err().contains("unknown sslmode"));
        assert!(SslMode::VerifyCa.requires_tls() && !SslMode::Prefer.requires_tls());
    }

    #[test]
    fn a_missing_root_file_is_a_clear_error() {
        let o =
            TlsOptions { mode: SslMode::VerifyFull, root_cert: Some(RootCert::File("/nonexistent/root.crt".into())) };
        let e = o.client_config().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/root.crt") && e.contains("hint"), "{e}");
        // Without verification no root is needed.
        let o = TlsOptions { mode: SslMode::Require, root_cert: None };
        assert!(o.client_config().is_ok());
    }
}
