//! TLS configuration from PEM (files or memory), built into rustls configurations on the
//! `ring` provider, TLS 1.3 only.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use thiserror::Error;

/// Why a TLS configuration could not be read or built.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The PEM holds no certificate, or no private key, or is not PEM.
    #[error("the {what} PEM holds no usable {what}")]
    Pem {
        /// What was looked for: "certificate", "private key", "CA certificate".
        what: &'static str,
    },
    /// The server name the client checks is not a DNS name or an IP address.
    #[error("{0:?} is not a valid server name (a DNS name or an IP address)")]
    ServerName(String),
    /// rustls refused the configuration (a key that does not match its certificate, a CA
    /// it cannot use, ...).
    #[error("the TLS configuration was refused")]
    Rustls(#[source] rustls::Error),
    /// The client-certificate verifier could not be built from the CA.
    #[error("the client CA cannot verify certificates")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn certs(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Pem { what })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { what });
    }
    Ok(certs)
}

fn key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|_| TlsError::Pem {
        what: "private key",
    })
}

fn roots(pem: &[u8]) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(pem, "CA certificate")? {
        roots.add(c).map_err(TlsError::Rustls)?;
    }
    Ok(roots)
}

/// The `ring` provider: no C toolchain beyond `cc` (aws-lc would want cmake on some hosts).
/// rustls marks it deprecated only because it offers no post-quantum key exchange; its
/// TLS 1.3 suites and X25519/P-256 key exchange are the standard ones.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server's TLS identity (certificate chain and key, PEM) and, for mutual TLS, the CA
/// client certificates must be signed by. `Debug` does not show the key.
#[derive(Clone)]
pub struct ServerTls {
    cert_chain: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("verifies_clients", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// From a PEM certificate chain (the server's first) and a PEM private key, in memory.
    /// Checked when the server binds.
    pub fn from_pem(cert_chain: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        Self {
            cert_chain: cert_chain.into(),
            key: key.into(),
            client_ca: None,
        }
    }

    /// From PEM files.
    ///
    /// # Errors
    /// [`TlsError::Read`] for a file that cannot be read.
    pub fn from_pem_files(
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        Ok(Self::from_pem(
            read(cert_chain.as_ref())?,
            read(key.as_ref())?,
        ))
    }

    /// Requires client certificates signed by this CA (PEM, one or more certificates).
    #[must_use]
    pub fn with_client_ca_pem(mut self, ca: impl Into<Vec<u8>>) -> Self {
        self.client_ca = Some(ca.into());
        self
    }

    /// [`with_client_ca_pem`](Self::with_client_ca_pem) from a file.
    ///
    /// # Errors
    /// [`TlsError::Read`].
    pub fn with_client_ca_file(self, ca: impl AsRef<Path>) -> Result<Self, TlsError> {
        Ok(self.with_client_ca_pem(read(ca.as_ref())?))
    }

    /// Whether clients must present a certificate.
    pub fn verifies_clients(&self) -> bool {
        self.client_ca.is_some()
    }

    /// The rustls configuration: TLS 1.3 only; client certificates required when a client
    /// CA is set.
    ///
    /// # Errors
    /// [`TlsError::Pem`], [`TlsError::Verifier`] or [`TlsError::Rustls`].
    pub(crate) fn build(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::Rustls)?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots(ca)?),
                    provider,
                )
                .build()
                .map_err(TlsError::Verifier)?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let cfg = builder
            .with_single_cert(certs(&self.cert_chain, "certificate")?, key(&self.key)?)
            .map_err(TlsError::Rustls)?;
        Ok(Arc::new(cfg))
    }
}

/// What a client checks of the server (a CA and the name the server's certificate must
/// carry) and, for mutual TLS, its own certificate and key. `Debug` does not show the key.
#[derive(Clone)]
pub struct ClientTls {
    ca: Vec<u8>,
    server_name: String,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .field("has_certificate", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts servers whose certificate is signed by `ca` (PEM) and names `server_name` (a
    /// DNS name or an IP address).
    pub fn from_ca_pem(ca: impl Into<Vec<u8>>, server_name: impl Into<String>) -> Self {
        Self {
            ca: ca.into(),
            server_name: server_name.into(),
            identity: None,
        }
    }

    /// [`from_ca_pem`](Self::from_ca_pem) from a file.
    ///
    /// # Errors
    /// [`TlsError::Read`].
    pub fn from_ca_file(
        ca: impl AsRef<Path>,
        server_name: impl Into<String>,
    ) -> Result<Self, TlsError> {
        Ok(Self::from_ca_pem(read(ca.as_ref())?, server_name))
    }

    /// Presents this certificate chain and key (PEM) to servers that ask (mutual TLS).
    #[must_use]
    pub fn with_client_cert_pem(
        mut self,
        cert_chain: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((cert_chain.into(), key.into()));
        self
    }

    /// [`with_client_cert_pem`](Self::with_client_cert_pem) from files.
    ///
    /// # Errors
    /// [`TlsError::Read`].
    pub fn with_client_cert_files(
        self,
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        Ok(self.with_client_cert_pem(read(cert_chain.as_ref())?, read(key.as_ref())?))
    }

    /// The rustls configuration and the server name to check: TLS 1.3 only.
    ///
    /// # Errors
    /// [`TlsError::Pem`], [`TlsError::ServerName`] or [`TlsError::Rustls`].
    pub(crate) fn build(
        &self,
    ) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>), TlsError> {
        let name = ServerName::try_from(self.server_name.clone())
            .map_err(|_| TlsError::ServerName(self.server_name.clone()))?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::Rustls)?
            .with_root_certificates(roots(&self.ca)?);
        let cfg = match &self.identity {
            Some((chain, k)) => builder
                .with_client_auth_cert(certs(chain, "certificate")?, key(k)?)
                .map_err(TlsError::Rustls)?,
            None => builder.with_no_client_auth(),
        };
        Ok((Arc::new(cfg), name))
    }
}
