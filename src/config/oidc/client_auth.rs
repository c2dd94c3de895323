//! `oidc.client_secret` / `oidc.client_certificate`: how the gateway proves itself at Entra's
//! token endpoint.

use std::path::PathBuf;

use toml::Spanned;

use super::super::raw::RawOidc;
use super::super::secret::Secrets;
use super::super::validate::Checker;

/// How the gateway authenticates itself at the token endpoint.
#[derive(Clone)]
pub enum ClientAuth {
    /// `client_secret = { file | env | value }`; sent in the form body (`client_secret_post`)
    /// or as HTTP Basic (`client_secret_basic`, extension key `client_secret_method = "basic"`).
    Secret { secret: String, basic: bool },
    /// `client_certificate = { cert = "…", key = "…" }`: `private_key_jwt` signed with the key;
    /// the certificate's thumbprints go into the assertion header.
    Certificate { cert: PathBuf, key: PathBuf },
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientAuth::Secret { basic, .. } => f
                .debug_struct("Secret")
                .field("secret", &"<redacted>")
                .field("basic", basic)
                .finish(),
            ClientAuth::Certificate { cert, key } => f
                .debug_struct("Certificate")
                .field("cert", cert)
                .field("key", key)
                .finish(),
        }
    }
}

impl Checker {
    pub(super) fn client_auth(
        &mut self,
        section: &Spanned<RawOidc>,
        secrets: &dyn Secrets,
    ) -> ClientAuth {
        let oidc = section.get_ref();
        let basic = match &oidc.client_secret_method {
            None => false,
            Some(method) => match method.get_ref().as_str() {
                "post" => false,
                "basic" => true,
                other => {
                    self.error(
                        "oidc.client_secret_method",
                        method,
                        format!(
                            "client_secret_method = {other:?} is not one of \"post\" or \"basic\""
                        ),
                    );
                    false
                }
            },
        };
        let unusable = ClientAuth::Secret {
            secret: String::new(),
            basic,
        };
        match (&oidc.client_secret, &oidc.client_certificate) {
            (Some(secret), None) => {
                let secret = self
                    .secret("oidc.client_secret", secret, secrets)
                    .unwrap_or_default();
                ClientAuth::Secret { secret, basic }
            }
            (None, Some(certificate)) => {
                if let Some(method) = &oidc.client_secret_method {
                    self.error(
                        "oidc.client_secret_method",
                        method,
                        "applies to client_secret only; with client_certificate the gateway signs an assertion (private_key_jwt) instead",
                    );
                }
                let certificate = certificate.get_ref();
                for (key, value) in [("cert", &certificate.cert), ("key", &certificate.key)] {
                    if value.get_ref().trim().is_empty() {
                        self.error(
                            format!("oidc.client_certificate.{key}"),
                            value,
                            "must be the path of a PEM file, not empty",
                        );
                    }
                }
                ClientAuth::Certificate {
                    cert: PathBuf::from(certificate.cert.get_ref()),
                    key: PathBuf::from(certificate.key.get_ref()),
                }
            }
            (Some(_), Some(certificate)) => {
                self.error(
                    "oidc.client_certificate",
                    certificate,
                    "give client_secret or client_certificate, not both: the gateway authenticates to Entra's token endpoint in one way",
                );
                unusable
            }
            (None, None) => {
                self.error(
                    "oidc",
                    section,
                    "needs the credential the gateway presents at Entra's token endpoint: client_secret = { file = \"…\" } or client_certificate = { cert = \"…\", key = \"…\" }",
                );
                unusable
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::config::test_support::*;
    use crate::config::ClientAuth;

    #[test]
    fn client_secret_and_client_certificate_together_are_refused() {
        refused(
            &with_oidc(&format!(
                "{OIDC}client_certificate = {{ cert = \"/etc/c.pem\", key = \"/etc/k.pem\" }}"
            )),
            &[
                "oidc.client_certificate (line 17)",
                "client_secret or client_certificate, not both",
            ],
        );
    }

    #[test]
    fn oidc_without_client_secret_or_certificate_is_refused() {
        refused(
            &with_oidc(&format!(
                "issuer = \"https://sts.windows.net/{TENANT}/\"\nclient_id = \"{CLIENT}\""
            )),
            &[
                "oidc (line 13): needs the credential",
                "client_secret",
                "client_certificate",
            ],
        );
    }

    #[test]
    fn client_certificate_is_accepted_with_its_paths_and_refused_when_a_path_is_empty() {
        let base =
            format!("issuer = \"https://sts.windows.net/{TENANT}/\"\nclient_id = \"{CLIENT}\"\n");
        let config = load(&with_oidc(&format!(
            "{base}client_certificate = {{ cert = \"/etc/mfa-gateway/gw.pem\", key = \"/etc/mfa-gateway/gw.key\" }}"
        )))
        .unwrap();
        match config.oidc.unwrap().client_auth {
            ClientAuth::Certificate { cert, key } => {
                assert_eq!(cert, PathBuf::from("/etc/mfa-gateway/gw.pem"));
                assert_eq!(key, PathBuf::from("/etc/mfa-gateway/gw.key"));
            }
            other => panic!("{other:?}"),
        }
        refused(
            &with_oidc(&format!(
                "{base}client_certificate = {{ cert = \"/etc/mfa-gateway/gw.pem\", key = \"\" }}"
            )),
            &["oidc.client_certificate.key (line 16)", "not empty"],
        );
    }

    #[test]
    fn client_secret_method_basic_is_accepted_and_other_methods_refused() {
        let config = load(&with_oidc(&format!(
            "{OIDC}client_secret_method = \"basic\""
        )))
        .unwrap();
        assert!(matches!(
            config.oidc.unwrap().client_auth,
            ClientAuth::Secret { basic: true, .. }
        ));
        refused(
            &with_oidc(&format!("{OIDC}client_secret_method = \"jwt\"")),
            &[
                "oidc.client_secret_method (line 17)",
                "not one of \"post\" or \"basic\"",
            ],
        );
        refused(
            &with_oidc(&format!(
                "issuer = \"https://sts.windows.net/{TENANT}/\"\nclient_id = \"{CLIENT}\"\nclient_certificate = {{ cert = \"/c\", key = \"/k\" }}\nclient_secret_method = \"post\""
            )),
            &["oidc.client_secret_method", "applies to client_secret only"],
        );
    }

    #[test]
    fn missing_client_secret_is_reported_by_file_or_variable_never_by_value() {
        let base =
            format!("issuer = \"https://sts.windows.net/{TENANT}/\"\nclient_id = \"{CLIENT}\"\n");
        refused(
            &with_oidc(&format!(
                "{base}client_secret = {{ file = \"/etc/mfa-gateway/absent\" }}"
            )),
            &[
                "oidc.client_secret (line 16)",
                "cannot read secret file /etc/mfa-gateway/absent",
            ],
        );
        refused(
            &with_oidc(&format!(
                "{base}client_secret = {{ env = \"MFA_GATEWAY_UNSET\" }}"
            )),
            &["oidc.client_secret (line 16): environment variable MFA_GATEWAY_UNSET is not set"],
        );
    }
}
