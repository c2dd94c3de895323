//! `[[tls.certificates]]`: the certificates the HTTPS listener presents, chosen by SNI.

use std::path::PathBuf;

use toml::Spanned;

use super::raw::RawCertificate;
use super::validate::Checker;

/// `[tls]`: the certificates of the published host names. Empty when the gateway has no
/// `server.https_listen`.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// `[[tls.certificates]]`, in file order; each connection gets the one whose names match
    /// the SNI it asks for.
    pub certificates: Vec<CertificateConfig>,
}

/// One `[[tls.certificates]]` entry: PEM files, read when the gateway starts or reloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateConfig {
    /// `cert`: the certificate with its intermediates.
    pub cert: PathBuf,
    /// `key`: its private key.
    pub key: PathBuf,
}

impl Checker {
    pub(super) fn tls(&mut self, certificates: &[Spanned<RawCertificate>]) -> TlsConfig {
        let mut out = Vec::new();
        for (i, certificate) in certificates.iter().enumerate() {
            let certificate = certificate.get_ref();
            for (key, value) in [("cert", &certificate.cert), ("key", &certificate.key)] {
                if value.get_ref().trim().is_empty() {
                    self.error(
                        format!("tls.certificates[{i}].{key}"),
                        value,
                        "must be the path of a PEM file, not empty",
                    );
                }
            }
            out.push(CertificateConfig {
                cert: PathBuf::from(certificate.cert.get_ref()),
                key: PathBuf::from(certificate.key.get_ref()),
            });
        }
        TlsConfig { certificates: out }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;
    use crate::config::CertificateConfig;

    #[test]
    fn https_listener_with_a_certificate_is_accepted() {
        let text = with_server(
            "https_listen = \"0.0.0.0:443\"\nhttp_listen = \"0.0.0.0:80\"",
            "[[tls.certificates]]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n",
        );
        let config = load(&text).unwrap();
        assert_eq!(
            config.tls.certificates,
            vec![CertificateConfig {
                cert: "/c.pem".into(),
                key: "/k.pem".into()
            }]
        );
    }

    #[test]
    fn certificate_with_an_empty_path_is_refused() {
        let text = with_server(
            "https_listen = \"0.0.0.0:443\"",
            "[[tls.certificates]]\ncert = \"/c.pem\"\nkey = \"\"\n",
        );
        refused(&text, &["tls.certificates[0].key", "not empty"]);
    }
}
