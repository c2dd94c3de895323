//! `[sso.adfs]` and the routes' `sso` key: how Exchange signs the user in once the gateway has
//! admitted them. With `sso = "adfs"` the gateway issues the WS-Federation token Exchange's AD FS
//! claims authentication accepts, signed with the certificate of `[sso.adfs].token_signing`.
//! With `sso = "kerberos"` it sends a Kerberos ticket obtained by constrained delegation
//! (`[sso.kerberos]`, in `kerberos.rs`).

use std::time::Duration;

use toml::Spanned;

use super::defaults::{DEFAULT_TOKEN_LIFETIME, MAX_TOKEN_SIGNING_ENTRIES};
use super::kerberos::KerberosConfig;
use super::raw::{RawAdfs, RawCertificate, RawRoute, RawSigningList, RawSso, Text};
use super::routes::Access;
use super::secret::Secrets;
use super::tls::CertificateConfig;
use super::upstreams::{UpstreamConfig, UpstreamScheme};
use super::validate::Checker;

/// `[sso]`: the single sign-on modes routes may name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SsoConfig {
    /// `[sso.adfs]`: present when the file has the section.
    pub adfs: Option<AdfsConfig>,
    /// `[sso.kerberos]`: present when the file has the section.
    pub kerberos: Option<KerberosConfig>,
}

/// `[sso.adfs]`: the token Exchange's AD FS claims authentication accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdfsConfig {
    /// `token_signing`: PEM certificate and RSA key files, read when the gateway starts or
    /// reloads. The first entry signs; the others are listed for a rollover (their thumbprints
    /// are shown by `check-config`, so Exchange can trust the next certificate before it signs).
    pub token_signing: Vec<CertificateConfig>,
    /// `token_lifetime`: how long a token is valid at most; never beyond the end of the gateway
    /// session it was issued from.
    pub token_lifetime: Duration,
    /// `issuer_name`: the SAML `Issuer`; `None` means the endpoint's own URL,
    /// `https://<host>/_gateway/wsfed/`.
    pub issuer_name: Option<String>,
}

/// `routes[].sso`: how Exchange signs the user in behind this route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sso {
    /// `"none"`: Exchange authenticates on its own (forms, Windows, or none at all).
    #[default]
    None,
    /// `"adfs"`: Exchange runs AD FS claims authentication and the gateway issues its token at
    /// `/_gateway/wsfed/`.
    Adfs,
    /// `"kerberos"`: Exchange runs Windows authentication and the gateway sends a Kerberos
    /// ticket for the user, obtained by constrained delegation with its own service account.
    Kerberos,
}

impl Sso {
    pub fn as_str(self) -> &'static str {
        match self {
            Sso::None => "none",
            Sso::Adfs => "adfs",
            Sso::Kerberos => "kerberos",
        }
    }
}

impl Checker {
    pub(super) fn sso(
        &mut self,
        sso: Option<&Spanned<RawSso>>,
        account_name_claim: bool,
        secrets: &dyn Secrets,
    ) -> SsoConfig {
        let adfs = sso
            .and_then(|sso| sso.get_ref().adfs.as_ref())
            .map(|adfs| self.adfs(adfs));
        let kerberos = sso
            .and_then(|sso| sso.get_ref().kerberos.as_ref())
            .map(|kerberos| self.kerberos(kerberos, account_name_claim, secrets));
        SsoConfig { adfs, kerberos }
    }

    fn adfs(&mut self, adfs: &Spanned<RawAdfs>) -> AdfsConfig {
        let raw = adfs.get_ref();
        let entries: Vec<(String, &RawCertificate, &Spanned<RawSigningList>)> =
            match raw.token_signing.get_ref() {
                RawSigningList::One(one) => {
                    vec![("sso.adfs.token_signing".to_owned(), one, &raw.token_signing)]
                }
                RawSigningList::Many(many) => many
                    .iter()
                    .enumerate()
                    .map(|(i, entry)| {
                        (
                            format!("sso.adfs.token_signing[{i}]"),
                            entry.get_ref(),
                            &raw.token_signing,
                        )
                    })
                    .collect(),
            };
        if entries.is_empty() {
            self.error(
                "sso.adfs.token_signing",
                &raw.token_signing,
                "needs the certificate and key that sign tokens: { cert = \"…\", key = \"…\" }",
            );
        }
        if entries.len() > MAX_TOKEN_SIGNING_ENTRIES {
            self.error(
                "sso.adfs.token_signing",
                &raw.token_signing,
                format!(
                    "lists {} certificates; at most {MAX_TOKEN_SIGNING_ENTRIES} (the one that signs and the ones of a rollover)",
                    entries.len()
                ),
            );
        }
        let mut token_signing = Vec::new();
        for (path, entry, at) in entries {
            for (key, value) in [("cert", &entry.cert), ("key", &entry.key)] {
                if value.get_ref().trim().is_empty() {
                    self.error(
                        format!("{path}.{key}"),
                        at,
                        "must be the path of a PEM file, not empty",
                    );
                }
            }
            token_signing.push(CertificateConfig {
                cert: entry.cert.get_ref().into(),
                key: entry.key.get_ref().into(),
            });
        }

        let token_lifetime = self.duration(
            "sso.adfs.token_lifetime",
            raw.token_lifetime.as_ref(),
            DEFAULT_TOKEN_LIFETIME,
            false,
        );
        let issuer_name = raw
            .issuer_name
            .as_ref()
            .and_then(|name| self.issuer_name(name));
        AdfsConfig {
            token_signing,
            token_lifetime,
            issuer_name,
        }
    }

    fn issuer_name(&mut self, name: &Text) -> Option<String> {
        let value = name.get_ref();
        let problem = if value.trim().is_empty() {
            Some("must not be empty; leave the key out to use https://<host>/_gateway/wsfed/")
        } else if value.chars().any(char::is_control) {
            Some("must not contain control characters")
        } else if value.len() > 1024 {
            Some("is longer than 1024 characters")
        } else {
            None
        };
        match problem {
            Some(message) => {
                self.error("sso.adfs.issuer_name", name, message);
                None
            }
            None => Some(value.clone()),
        }
    }

    /// A route's `sso` key, checked against its access rule, its upstream and the `[sso]`
    /// section.
    pub(super) fn route_sso(
        &mut self,
        path: &str,
        route: &RawRoute,
        access: Option<Access>,
        sso: &SsoConfig,
        upstream: Option<&UpstreamConfig>,
    ) -> Sso {
        let Some(value) = &route.sso else {
            return Sso::None;
        };
        let key = format!("{path}.sso");
        let mode = match value.get_ref().as_str() {
            "none" => return Sso::None,
            "adfs" => Sso::Adfs,
            "kerberos" => Sso::Kerberos,
            other => {
                self.error(
                    key,
                    value,
                    format!("sso = {other:?} is not one of \"none\", \"adfs\" or \"kerberos\""),
                );
                return Sso::None;
            }
        };
        if access.is_some_and(|access| access != Access::Mfa) {
            // A token or ticket that signs a user in to Exchange is issued only after MFA:
            // never on a route anyone can reach.
            self.error(
                key.clone(),
                value,
                format!(
                    "sso = {:?} needs access = \"mfa\": the gateway signs a user in to Exchange only after a sign-in with MFA",
                    mode.as_str()
                ),
            );
        }
        match mode {
            Sso::Adfs if sso.adfs.is_none() => self.error(
                key,
                value,
                "sso = \"adfs\" needs a [sso.adfs] section with the token-signing certificate",
            ),
            Sso::Kerberos if sso.kerberos.is_none() => self.error(
                key,
                value,
                "sso = \"kerberos\" needs a [sso.kerberos] section with the gateway's service account and keytab",
            ),
            Sso::Kerberos => {
                // Exchange's Extended Protection binds the ticket to the TLS connection it
                // arrives on; over plain HTTP there is nothing to bind to, and the ticket could
                // be replayed by whoever sees it.
                let plain = upstream.is_some_and(|upstream| {
                    upstream
                        .servers
                        .iter()
                        .any(|server| server.scheme != UpstreamScheme::Https)
                });
                if plain {
                    self.error(
                        key,
                        value,
                        "sso = \"kerberos\" needs an upstream whose servers are all https://: the Kerberos ticket is bound to the TLS connection to Exchange (Extended Protection) and must never cross the network in plain HTTP",
                    );
                }
            }
            _ => {}
        }
        mode
    }

    /// `[sso.adfs]` that no route uses signs nothing: probably a route's `sso` key is missing.
    pub(super) fn unused_sso(&mut self, sso: Option<&Spanned<RawSso>>, routes: &[Sso]) {
        let Some(sso) = sso else {
            return;
        };
        if let Some(adfs) = &sso.get_ref().adfs {
            if !routes.contains(&Sso::Adfs) {
                self.warning(
                    "sso.adfs",
                    adfs,
                    "no route has sso = \"adfs\"; no token will be issued",
                );
            }
        }
        if let Some(kerberos) = &sso.get_ref().kerberos {
            if !routes.contains(&Sso::Kerberos) {
                self.warning(
                    "sso.kerberos",
                    kerberos,
                    "no route has sso = \"kerberos\"; no ticket will be asked for",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::test_support::*;
    use crate::config::{AdfsConfig, CertificateConfig, Sso};

    const ADFS: &str = "[sso.adfs]\ntoken_signing = { cert = \"/etc/mfa-gateway/ts.pem\", key = \"/etc/mfa-gateway/ts.key\" }\n";

    fn adfs_route(route: &str, rest: &str) -> String {
        signed_in(route, OIDC, &format!("[session]\n{SESSION}\n{rest}"))
    }

    #[test]
    fn an_mfa_route_with_sso_adfs_and_its_section_is_accepted() {
        let config = load(&adfs_route("sso = \"adfs\"", ADFS)).unwrap();
        assert_eq!(config.routes[0].sso, Sso::Adfs);
        assert_eq!(
            config.sso.adfs,
            Some(AdfsConfig {
                token_signing: vec![CertificateConfig {
                    cert: "/etc/mfa-gateway/ts.pem".into(),
                    key: "/etc/mfa-gateway/ts.key".into(),
                }],
                token_lifetime: Duration::from_secs(8 * 3600),
                issuer_name: None,
            })
        );
    }

    #[test]
    fn routes_without_the_key_have_no_sso() {
        let config = load(&adfs_route("", "")).unwrap();
        assert_eq!(config.routes[0].sso, Sso::None);
        assert!(config.sso.adfs.is_none());
        let config = load(&adfs_route("sso = \"none\"", "")).unwrap();
        assert_eq!(config.routes[0].sso, Sso::None);
    }

    #[test]
    fn a_rollover_lists_several_certificates_and_the_first_signs() {
        let text = adfs_route(
            "sso = \"adfs\"",
            "[sso.adfs]\ntoken_signing = [\n  { cert = \"/new.pem\", key = \"/new.key\" },\n  { cert = \"/old.pem\", key = \"/old.key\" },\n]\ntoken_lifetime = \"1h\"\nissuer_name = \"https://sts.contoso.com/adfs/services/trust\"\n",
        );
        let adfs = load(&text).unwrap().sso.adfs.unwrap();
        assert_eq!(adfs.token_signing.len(), 2);
        assert_eq!(adfs.token_signing[0].cert, std::path::Path::new("/new.pem"));
        assert_eq!(adfs.token_lifetime, Duration::from_secs(3600));
        assert_eq!(
            adfs.issuer_name.as_deref(),
            Some("https://sts.contoso.com/adfs/services/trust")
        );
    }

    #[test]
    fn sso_adfs_on_a_public_route_is_refused() {
        let text = format!(
            "{}sso = \"adfs\"\n[oidc]\n{OIDC}[session]\n{SESSION}{ADFS}",
            route_with("localhost", "/owa", "exchange", "public")
        );
        refused(
            &text,
            &["routes[0].sso", "needs access = \"mfa\"", "line 12"],
        );
    }

    #[test]
    fn sso_adfs_without_its_section_is_refused() {
        refused(
            &adfs_route("sso = \"adfs\"", ""),
            &["routes[0].sso", "[sso.adfs]"],
        );
    }

    #[test]
    fn unknown_modes_are_refused_with_the_choices() {
        refused(
            &adfs_route("sso = \"saml\"", ADFS),
            &[
                "routes[0].sso",
                "\"saml\"",
                "\"none\", \"adfs\" or \"kerberos\"",
            ],
        );
    }

    #[test]
    fn signing_entries_need_both_paths_and_known_keys() {
        refused(
            &adfs_route(
                "sso = \"adfs\"",
                "[sso.adfs]\ntoken_signing = { cert = \"/c.pem\", key = \"\" }\n",
            ),
            &["sso.adfs.token_signing.key", "not empty"],
        );
        refused(
            &adfs_route("sso = \"adfs\"", "[sso.adfs]\ntoken_signing = []\n"),
            &["sso.adfs.token_signing", "needs the certificate"],
        );
        let found = errors(&adfs_route(
            "sso = \"adfs\"",
            "[sso.adfs]\ntoken_signing = { cert = \"/c.pem\", key = \"/k.pem\", password = \"x\" }\n",
        ));
        assert!(
            found.iter().any(|e| e.contains("unknown key `password`")),
            "{found:#?}"
        );
        let found = errors(&adfs_route(
            "sso = \"adfs\"",
            "[sso.adfs]\ntoken_signing = \"/c.pem\"\n",
        ));
        assert!(
            found.iter().any(|e| e.contains("sso.adfs.token_signing")),
            "{found:#?}"
        );
    }

    #[test]
    fn lifetime_and_issuer_name_are_checked() {
        refused(
            &adfs_route(
                "sso = \"adfs\"",
                &format!("{ADFS}token_lifetime = \"0s\"\n"),
            ),
            &["sso.adfs.token_lifetime"],
        );
        refused(
            &adfs_route("sso = \"adfs\"", &format!("{ADFS}issuer_name = \"\"\n")),
            &["sso.adfs.issuer_name", "not be empty"],
        );
    }

    #[test]
    fn a_section_no_route_uses_is_a_warning() {
        let unused = warnings(&adfs_route("", ADFS));
        assert!(
            unused
                .iter()
                .any(|w| w.contains("sso.adfs") && w.contains("no route has sso")),
            "{unused:#?}"
        );
        assert!(warnings(&adfs_route("sso = \"adfs\"", ADFS))
            .iter()
            .all(|w| !w.contains("no route has sso")));
    }

    #[test]
    fn other_sso_tables_are_unknown_keys() {
        let errors = errors(&adfs_route("", "[sso.forms]\nlogon = \"/owa/auth.owa\"\n"));
        assert!(
            errors
                .iter()
                .any(|e| e.contains("unknown key `forms`") && e.contains("kerberos")),
            "{errors:#?}"
        );
    }
}
