//! TLS for the browser side: several certificates chosen by SNI from the names they carry,
//! TLS 1.2 and 1.3 only, ALPN `h2` and `http/1.1`. Certificates live behind an atomically
//! swapped set, so a SIGHUP reload replaces them for new handshakes while established
//! connections keep theirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::CertificateConfig;

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a configured certificate cannot serve, naming the entry of `[[tls.certificates]]` and
/// the file.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("tls.certificates[{index}].cert: cannot read {}: {error}", .path.display())]
    CertUnreadable {
        index: usize,
        path: PathBuf,
        error: pem::Error,
    },
    /// A PEM block that does not decode.
    #[error("tls.certificates[{index}].cert: {}: {error}", .path.display())]
    CertNotPem {
        index: usize,
        path: PathBuf,
        error: pem::Error,
    },
    #[error("tls.certificates[{index}].cert: {} holds no PEM certificate", .path.display())]
    NoCertificate { index: usize, path: PathBuf },
    #[error(
        "tls.certificates[{index}].key: cannot read a private key from {}: {error}",
        .path.display()
    )]
    KeyUnreadable {
        index: usize,
        path: PathBuf,
        error: pem::Error,
    },
    /// The key is not the certificate's, or rustls cannot use it.
    #[error(
        "tls.certificates[{index}]: {} and {} do not form a usable pair: {error}",
        .cert.display(),
        .key.display()
    )]
    NotAPair {
        index: usize,
        cert: PathBuf,
        key: PathBuf,
        error: rustls::Error,
    },
    #[error("tls.certificates[{index}].cert: {}: {error}", .path.display())]
    NoEndEntity {
        index: usize,
        path: PathBuf,
        error: rustls::Error,
    },
    #[error(
        "tls.certificates[{index}].cert: {}: not a usable certificate: {error:?}",
        .path.display()
    )]
    Unusable {
        index: usize,
        path: PathBuf,
        error: webpki::Error,
    },
    /// Without a DNS name in subjectAltName no SNI name can select the certificate.
    #[error(
        "tls.certificates[{index}].cert: {} carries no DNS name (subjectAltName) to match SNI against",
        .path.display()
    )]
    NoDnsName { index: usize, path: PathBuf },
    /// rustls refused TLS 1.2 and 1.3 (the ring provider has both: not expected).
    #[error("{0}")]
    Protocols(rustls::Error),
}

/// The loaded certificates and the names each one serves.
pub struct CertSet {
    entries: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl CertSet {
    /// Loads every configured certificate and key. Fails with one error per unusable file,
    /// each naming its key path, so `check-config` shows every problem in one run.
    pub fn load(configs: &[CertificateConfig]) -> Result<CertSet, Vec<CertError>> {
        let provider = provider();
        let mut entries = Vec::with_capacity(configs.len());
        let mut errors = Vec::new();
        for (i, config) in configs.iter().enumerate() {
            match load_one(i, config, &provider) {
                Ok(entry) => entries.push(entry),
                Err(mut problems) => errors.append(&mut problems),
            }
        }
        if errors.is_empty() {
            Ok(CertSet { entries })
        } else {
            Err(errors)
        }
    }

    pub fn empty() -> CertSet {
        CertSet {
            entries: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The certificate for `server_name`: an exact name first, then a `*.` wildcard covering
    /// one label; without SNI or without a match, the first configured certificate.
    fn choose(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = server_name {
            let name = name.trim_end_matches('.');
            let exact = self
                .entries
                .iter()
                .find(|(names, _)| names.iter().any(|n| n.eq_ignore_ascii_case(name)));
            if let Some((_, key)) = exact {
                return Some(key.clone());
            }
            if let Some((_, parent)) = name.split_once('.') {
                let wildcard = self.entries.iter().find(|(names, _)| {
                    names.iter().any(|n| {
                        n.strip_prefix("*.")
                            .is_some_and(|suffix| suffix.eq_ignore_ascii_case(parent))
                    })
                });
                if let Some((_, key)) = wildcard {
                    return Some(key.clone());
                }
            }
        }
        self.entries.first().map(|(_, key)| key.clone())
    }
}

fn load_one(
    index: usize,
    config: &CertificateConfig,
    provider: &CryptoProvider,
) -> Result<(Vec<String>, Arc<CertifiedKey>), Vec<CertError>> {
    let chain = load_chain(index, &config.cert);
    let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|error| CertError::KeyUnreadable {
        index,
        path: config.key.clone(),
        error,
    });
    let (chain, key) = match (chain, key) {
        (Ok(chain), Ok(key)) => (chain, key),
        (chain, key) => {
            return Err([chain.err(), key.err()].into_iter().flatten().collect());
        }
    };
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|error| {
        vec![CertError::NotAPair {
            index,
            cert: config.cert.clone(),
            key: config.key.clone(),
            error,
        }]
    })?;
    let names = dns_names(index, &config.cert, &certified).map_err(|e| vec![e])?;
    if names.is_empty() {
        return Err(vec![CertError::NoDnsName {
            index,
            path: config.cert.clone(),
        }]);
    }
    Ok((names, Arc::new(certified)))
}

fn load_chain(index: usize, path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|error| CertError::CertUnreadable {
            index,
            path: path.to_owned(),
            error,
        })?
        .collect::<Result<_, _>>()
        .map_err(|error| CertError::CertNotPem {
            index,
            path: path.to_owned(),
            error,
        })?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate {
            index,
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

fn dns_names(index: usize, path: &Path, key: &CertifiedKey) -> Result<Vec<String>, CertError> {
    let der = key
        .end_entity_cert()
        .map_err(|error| CertError::NoEndEntity {
            index,
            path: path.to_owned(),
            error,
        })?;
    let cert = webpki::EndEntityCert::try_from(der).map_err(|error| CertError::Unusable {
        index,
        path: path.to_owned(),
        error,
    })?;
    Ok(cert.valid_dns_names().map(str::to_owned).collect())
}

/// rustls' certificate resolver over the current [`CertSet`].
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertSet>,
}

impl std::fmt::Debug for CertSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(names, _)| names))
            .finish()
    }
}

impl CertStore {
    pub fn new(set: CertSet) -> Arc<CertStore> {
        Arc::new(CertStore {
            current: ArcSwap::from_pointee(set),
        })
    }

    pub fn replace(&self, set: CertSet) {
        self.current.store(Arc::new(set));
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().choose(hello.server_name())
    }
}

/// The rustls server configuration: TLS 1.2 and 1.3, ALPN h2 then http/1.1.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<rustls::ServerConfig>, CertError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(CertError::Protocols)?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
