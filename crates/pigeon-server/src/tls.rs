//! TLS for `mqtts` and `wss` listeners: certificate and key from PEM files, client certificates
//! verified against a CA (required or optional), the certificate's Common Name as username, and
//! reload on SIGHUP.
//!
//! A listener's rustls `ServerConfig` sits in an `Arc` behind a `std::sync::RwLock`. Each
//! handshake clones the `Arc` when it starts, so a reload changes what new connections get while
//! open connections keep the config they started with. A reload that fails leaves the old config
//! in place. The handshake itself runs in the connection's task (`listener`), never here.

use pigeon_codec::ByteStr;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

/// Why a listener's certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{what} {} holds no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks)", path.display())]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("tls_key {} holds no private key (expected a PEM \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\" block)", path.display())]
    NoKey { path: PathBuf },
    #[error("tls_client_ca {}: {source}", path.display())]
    ClientCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("tls_client_ca {}: {source}", path.display())]
    Verifier {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("tls_cert {} with tls_key {}: {source}", cert.display(), key.display())]
    CertKey {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// The files a TLS listener reads, at start and at each reload.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) client_ca: Option<PathBuf>,
    pub(crate) client_optional: bool,
}

/// A listener's TLS configuration, swapped whole on reload.
pub(crate) struct TlsSource {
    files: TlsFiles,
    // std's lock, not tokio's: it is held only to clone or replace the `Arc`, never across an
    // await, and readers (one per handshake) must not queue behind an async lock.
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsSource {
    pub(crate) fn load(files: TlsFiles) -> Result<TlsSource, TlsError> {
        let config = server_config(&files)?;
        Ok(TlsSource {
            files,
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// The config for a handshake starting now.
    pub(crate) fn config(&self) -> Arc<ServerConfig> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        Arc::clone(&current)
    }

    /// Reads the files again; on success new handshakes use them, on failure nothing changes.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let config = Arc::new(server_config(&self.files)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    pub(crate) fn files(&self) -> &TlsFiles {
        &self.files
    }
}

/// Runs the server side of a TLS handshake with the config current at its start.
pub(crate) async fn accept<S>(source: &TlsSource, stream: S) -> std::io::Result<TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio_rustls::TlsAcceptor::from(source.config())
        .accept(stream)
        .await
}

/// Where a client's username comes from (`use_identity_as_username`). The connection hands it
/// to the auth chain as the username and as the verified certificate identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Username {
    /// CONNECT's User Name field.
    FromConnect,
    /// The Common Name of the client's verified certificate, replacing CONNECT's.
    FromCertificate(ByteStr),
    /// The listener takes usernames from certificates and the client presented none (or one
    /// without a Common Name): the connection refuses the client, as mosquitto does.
    CertificateMissing,
}

/// The username a TLS client gets on a listener with `use_identity_as_username`.
pub(crate) fn username_from_certificate<S>(stream: &TlsStream<S>) -> Username {
    let (_, session) = stream.get_ref();
    session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(common_name)
        .map_or(Username::CertificateMissing, |cn| {
            Username::FromCertificate(ByteStr::from(cn))
        })
}

/// The first Common Name of a certificate's subject, if it is a string.
pub(crate) fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    // The provider is named rather than taken from the process default, which is ambiguous (and
    // panics) when another crate in the process enables a second provider.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("aws-lc-rs supports TLS 1.2 and 1.3");
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates("tls_client_ca", path)? {
                roots.add(cert).map_err(|source| TlsError::ClientCa {
                    path: path.clone(),
                    source,
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if files.client_optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier.build().map_err(|source| TlsError::Verifier {
                path: path.clone(),
                source,
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let chain = certificates("tls_cert", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: files.key.clone(),
        },
        source => TlsError::Pem {
            what: "tls_key",
            path: files.key.clone(),
            source,
        },
    })?;
    builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::CertKey {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |source| TlsError::Pem {
        what,
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}
