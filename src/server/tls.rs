//! TLS for the browser side: several certificates chosen by SNI from the names they carry,
//! TLS 1.2 and 1.3 only, ALPN `h2` and `http/1.1`. Certificates live behind an atomically
//! swapped set, so a SIGHUP reload replaces them for new handshakes while established
//! connections keep theirs.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::CertificateConfig;

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The loaded certificates and the names each one serves.
pub struct CertSet {
    entries: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl CertSet {
    /// Loads every configured certificate and key. Fails with one line per unusable file, each
    /// naming its key path, so `check-config` shows every problem in one run.
    pub fn load(configs: &[CertificateConfig]) -> Result<CertSet, Vec<String>> {
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
    i: usize,
    config: &CertificateConfig,
    provider: &CryptoProvider,
) -> Result<(Vec<String>, Arc<CertifiedKey>), Vec<String>> {
    let key_path = format!("tls.certificates[{i}]");
    let chain = load_chain(&config.cert).map_err(|e| format!("{key_path}.cert: {e}"));
    let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|e| {
        format!(
            "{key_path}.key: cannot read a private key from {}: {e}",
            config.key.display()
        )
    });
    let (chain, key) = match (chain, key) {
        (Ok(chain), Ok(key)) => (chain, key),
        (chain, key) => {
            return Err([chain.err(), key.err()].into_iter().flatten().collect());
        }
    };
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        vec![format!(
            "{key_path}: {} and {} do not form a usable pair: {e}",
            config.cert.display(),
            config.key.display()
        )]
    })?;
    let names = dns_names(&certified)
        .map_err(|e| vec![format!("{key_path}.cert: {}: {e}", config.cert.display())])?;
    if names.is_empty() {
        return Err(vec![format!(
            "{key_path}.cert: {} carries no DNS name (subjectAltName) to match SNI against",
            config.cert.display()
        )]);
    }
    Ok((names, Arc::new(certified)))
}

fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(chain)
}

fn dns_names(key: &CertifiedKey) -> Result<Vec<String>, String> {
    let der = key.end_entity_cert().map_err(|e| e.to_string())?;
    let cert = webpki::EndEntityCert::try_from(der)
        .map_err(|e| format!("not a usable certificate: {e:?}"))?;
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
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
