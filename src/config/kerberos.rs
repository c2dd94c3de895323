//! `[sso.kerberos]` and the upstreams' `kerberos_spn`: signing the user in to Exchange on
//! Windows authentication with Kerberos constrained delegation. The gateway holds a keytab for
//! its own service account, asks the KDC for a ticket to itself in the user's name (S4U2Self,
//! "protocol transition") and exchanges it for a ticket to Exchange's SPN (S4U2Proxy).
//!
//! The keytab is read here, so `check-config` refuses a `principal` the keytab has no key for:
//! otherwise every user would be turned away by the KDC at the first request.

use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::defaults::{DEFAULT_TICKET_LIFETIME, MAX_KDCS};
use super::raw::{RawKerberos, Text};
use super::secret::{SecretSource, Secrets};
use super::validate::Checker;
use crate::sso::kerberos::keytab::{is_weak_enctype, parse_keytab};

/// `[sso.kerberos]`: the gateway's service account and its KDCs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KerberosConfig {
    /// `realm`: the Active Directory domain's Kerberos realm, its DNS name in upper case.
    pub realm: String,
    /// `kdc`: `host:port` of the domain controllers, port 88 when not written. Empty: the KDCs
    /// are found through DNS (`_kerberos._tcp.<realm>` SRV records), as domain members do.
    pub kdc: Vec<String>,
    /// `principal`: the service account, `name@REALM` (the realm is added when left out).
    pub principal: String,
    /// `keytab = { file = "…" }`: the service account's keys.
    pub keytab: PathBuf,
    /// `user`: which identity of the signed-in user the gateway asks tickets for.
    pub user: KerberosUser,
    /// `ticket_lifetime`: how long the ticket obtained for a user is reused before the gateway
    /// asks the KDC again (sooner when the KDC grants less).
    pub ticket_lifetime: Duration,
}

/// `sso.kerberos.user`: the identity the gateway impersonates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KerberosUser {
    /// `"upn"`: the user principal name of the Entra sign-in (the `upn` claim, which Entra
    /// synchronises from on-premises AD), asked for as an enterprise name
    /// (`alice@contoso.com`), so alternative UPN suffixes work.
    Upn,
    /// `"onprem_sam_account_name"`: the on-premises sAMAccountName from the claim
    /// `oidc.account_name_claim` names, asked for as `name@REALM`.
    OnpremSamAccountName,
}

impl KerberosUser {
    pub fn as_str(self) -> &'static str {
        match self {
            KerberosUser::Upn => "upn",
            KerberosUser::OnpremSamAccountName => "onprem_sam_account_name",
        }
    }
}

impl Checker {
    pub(super) fn kerberos(
        &mut self,
        raw: &Spanned<RawKerberos>,
        account_name_claim: bool,
        secrets: &dyn Secrets,
    ) -> KerberosConfig {
        let raw = raw.get_ref();
        let realm = self.kerberos_realm(&raw.realm);
        let kdc = self.kerberos_kdcs(raw.kdc.as_ref());
        let principal = self.kerberos_principal(&raw.principal, &realm);
        let keytab = self.kerberos_keytab(&raw.keytab, principal.as_deref(), secrets);
        let user = match raw.user.as_ref() {
            None => KerberosUser::Upn,
            Some(value) => {
                match value.get_ref().as_str() {
                    "upn" => KerberosUser::Upn,
                    "onprem_sam_account_name" => {
                        if !account_name_claim {
                            self.error(
                            "sso.kerberos.user",
                            value,
                            "user = \"onprem_sam_account_name\" needs oidc.account_name_claim: the name of the ID-token claim that carries the on-premises sAMAccountName",
                        );
                        }
                        KerberosUser::OnpremSamAccountName
                    }
                    other => {
                        self.error(
                        "sso.kerberos.user",
                        value,
                        format!("user = {other:?} is not one of \"upn\" or \"onprem_sam_account_name\""),
                    );
                        KerberosUser::Upn
                    }
                }
            }
        };
        let ticket_lifetime = self.duration(
            "sso.kerberos.ticket_lifetime",
            raw.ticket_lifetime.as_ref(),
            DEFAULT_TICKET_LIFETIME,
            false,
        );
        KerberosConfig {
            realm: realm.unwrap_or_default(),
            kdc,
            principal: principal.unwrap_or_default(),
            keytab,
            user,
            ticket_lifetime,
        }
    }

    fn kerberos_realm(&mut self, realm: &Text) -> Option<String> {
        let value = realm.get_ref().trim();
        let problem = if value.is_empty() {
            Some("must not be empty; write the domain's DNS name in upper case, such as \"CORP.CONTOSO.COM\"".to_owned())
        } else if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
        {
            Some(format!("{value:?} is not a realm name; write the domain's DNS name in upper case, such as \"CORP.CONTOSO.COM\""))
        } else if value.bytes().any(|b| b.is_ascii_lowercase()) {
            // Kerberos compares realms exactly, and Active Directory's realm is upper case.
            Some(format!(
                "{value:?}: an Active Directory realm is written in upper case: {:?}",
                value.to_ascii_uppercase()
            ))
        } else {
            None
        };
        match problem {
            Some(message) => {
                self.error("sso.kerberos.realm", realm, message);
                None
            }
            None => Some(value.to_owned()),
        }
    }

    fn kerberos_kdcs(&mut self, list: Option<&Spanned<Vec<Text>>>) -> Vec<String> {
        let Some(list) = list else {
            return Vec::new();
        };
        if list.get_ref().is_empty() {
            self.error(
                "sso.kerberos.kdc",
                list,
                "lists no KDC; leave kdc out to find the domain controllers through DNS",
            );
        }
        if list.get_ref().len() > MAX_KDCS {
            self.error(
                "sso.kerberos.kdc",
                list,
                format!("lists more than {MAX_KDCS} KDCs"),
            );
        }
        let mut out = Vec::new();
        for (i, kdc) in list.get_ref().iter().enumerate() {
            match check_kdc(kdc.get_ref()) {
                Ok(address) => out.push(address),
                Err(message) => self.error(format!("sso.kerberos.kdc[{i}]"), kdc, message),
            }
        }
        out
    }

    fn kerberos_principal(&mut self, principal: &Text, realm: &Option<String>) -> Option<String> {
        let value = principal.get_ref().trim();
        let (name, written_realm) = match value.rsplit_once('@') {
            Some((name, realm)) => (name, Some(realm)),
            None => (value, None),
        };
        let valid_name = !name.is_empty()
            && !name.starts_with('/')
            && !name.ends_with('/')
            && name.chars().all(|c| c.is_ascii_graphic() && c != '@');
        if !valid_name {
            self.error(
                "sso.kerberos.principal",
                principal,
                format!("{value:?} is not a principal name; write the service account as \"svc-mfagw@CORP.CONTOSO.COM\""),
            );
            return None;
        }
        if name.contains('/') {
            // Active Directory does not let a service principal name sign in as a client:
            // the KDC answers "client not found".
            self.warning(
                "sso.kerberos.principal",
                principal,
                format!("{name:?} looks like a service principal name; Active Directory issues the gateway's own ticket only for the account name (\"svc-mfagw@REALM\", or \"HOST$@REALM\" for a computer account)"),
            );
        }
        let realm = realm.as_deref()?;
        match written_realm {
            Some(written) if written != realm => {
                self.error(
                    "sso.kerberos.principal",
                    principal,
                    format!("{value:?} is in realm {written:?}, not sso.kerberos.realm {realm:?}; constrained delegation works within the service account's own realm"),
                );
                None
            }
            _ => Some(format!("{name}@{realm}")),
        }
    }

    fn kerberos_keytab(
        &mut self,
        keytab: &Spanned<SecretSource>,
        principal: Option<&str>,
        secrets: &dyn Secrets,
    ) -> PathBuf {
        let SecretSource::File(path) = keytab.get_ref() else {
            self.error(
                "sso.kerberos.keytab",
                keytab,
                "a keytab is a binary file: write keytab = { file = \"/etc/mfa-gateway/svc-mfagw.keytab\" }",
            );
            return PathBuf::new();
        };
        let bytes = match secrets.binary_file(path) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.error(
                    "sso.kerberos.keytab",
                    keytab,
                    format!("cannot read keytab file {}: {e}", path.display()),
                );
                return path.clone();
            }
        };
        let entries = match parse_keytab(&bytes) {
            Ok(entries) => entries,
            Err(e) => {
                self.error(
                    "sso.kerberos.keytab",
                    keytab,
                    format!("{} {e}", path.display()),
                );
                return path.clone();
            }
        };
        let Some(principal) = principal else {
            return path.clone();
        };
        let keys: Vec<_> = entries
            .iter()
            .filter(|e| e.principal == principal)
            .collect();
        if keys.is_empty() {
            let mut held: Vec<&str> = entries.iter().map(|e| e.principal.as_str()).collect();
            held.dedup();
            let hint = match held
                .iter()
                .find(|held| held.eq_ignore_ascii_case(principal))
            {
                Some(other) => format!(" (it has {other:?}: Kerberos compares names exactly)"),
                None if held.is_empty() => " (it holds no keys)".to_owned(),
                None => format!(" (it holds keys for {})", held.join(", ")),
            };
            self.error(
                "sso.kerberos.keytab",
                keytab,
                format!(
                    "{} has no key for sso.kerberos.principal {principal:?}{hint}",
                    path.display()
                ),
            );
        } else if keys.iter().all(|k| is_weak_enctype(k.enctype)) {
            let kinds: Vec<String> = keys.iter().map(|k| k.enctype_name()).collect();
            self.warning(
                "sso.kerberos.keytab",
                keytab,
                format!(
                    "{} holds only {} keys for {principal:?}; set msDS-SupportedEncryptionTypes to AES (24) on the account and export it again with ktpass -crypto AES256-SHA1",
                    path.display(),
                    kinds.join(", ")
                ),
            );
        }
        path.clone()
    }

    /// `upstreams.<name>.kerberos_spn`: `SERVICE/host`, as `setspn -L` lists it.
    pub(super) fn kerberos_spn(&mut self, path: &str, spn: &Text) -> Option<String> {
        let value = spn.get_ref().trim();
        let valid = value.split_once('/').is_some_and(|(service, host)| {
            !service.is_empty()
                && service
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
        });
        if valid {
            Some(value.to_owned())
        } else {
            self.error(
                format!("{path}.kerberos_spn"),
                spn,
                format!("{value:?} is not a service principal name; write it as setspn -L lists it, such as \"HTTP/mail.contoso.com\" (without a realm)"),
            );
            None
        }
    }
}

/// `host` or `host:port` (port 88 when left out); IPv6 addresses in brackets.
fn check_kdc(kdc: &str) -> Result<String, String> {
    let kdc = kdc.trim();
    if kdc.is_empty()
        || kdc.contains("://")
        || kdc.contains('/')
        || kdc.contains(char::is_whitespace)
    {
        return Err(format!(
            "{kdc:?} is not a KDC address; write \"dc01.corp.contoso.com\" or \"dc01.corp.contoso.com:88\""
        ));
    }
    let (host, port) = if let Some(rest) = kdc.strip_prefix('[') {
        match rest.split_once(']') {
            Some((host, "")) => (format!("[{host}]"), None),
            Some((host, port)) if port.starts_with(':') => (format!("[{host}]"), Some(&port[1..])),
            _ => {
                return Err(format!(
                "{kdc:?}: an IPv6 address is written in brackets, such as \"[2001:db8::10]:88\""
            ))
            }
        }
    } else {
        match kdc.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (kdc.to_owned(), None),
        }
    };
    let port = match port {
        None => 88,
        Some(port) => match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("{kdc:?}: {port:?} is not a port number")),
        },
    };
    if host.is_empty() || host.contains(':') && !host.starts_with('[') {
        return Err(format!("{kdc:?} is not a KDC address"));
    }
    Ok(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::test_support::*;
    use crate::config::{Config, KerberosConfig, KerberosUser, MapSecrets, Sso};
    use crate::sso::kerberos::keytab::write_keytab_for_tests;

    const KEYTAB: &str = "/etc/mfa-gateway/svc-mfagw.keytab";
    const KERBEROS: &str = "[sso.kerberos]\nrealm = \"CORP.CONTOSO.COM\"\nprincipal = \"svc-mfagw@CORP.CONTOSO.COM\"\nkeytab = { file = \"/etc/mfa-gateway/svc-mfagw.keytab\" }\n";

    fn keytab_secrets(keytab: &[(&str, u32, i32)]) -> MapSecrets {
        secrets().with_binary_file(KEYTAB, write_keytab_for_tests(keytab))
    }

    fn good_keytab() -> MapSecrets {
        keytab_secrets(&[
            ("svc-mfagw@CORP.CONTOSO.COM", 2, 18),
            ("svc-mfagw@CORP.CONTOSO.COM", 2, 17),
        ])
    }

    /// A sign-in configuration whose upstream is `servers`, with an `sso = "kerberos"` route and
    /// `kerberos` (the section and anything after it).
    fn kerberos_config(servers: &str, upstream_extra: &str, route: &str, kerberos: &str) -> String {
        format!(
            "[server]\nhttp_listen = \"127.0.0.1:8080\"\n[upstreams.exchange]\nservers = {servers}\n{upstream_extra}\n[[routes]]\nhost = \"localhost\"\npath = \"/owa\"\nupstream = \"exchange\"\naccess = \"mfa\"\n{route}\n[oidc]\n{OIDC}\n[session]\n{SESSION}\n{kerberos}"
        )
    }

    fn https_route(kerberos: &str) -> String {
        kerberos_config(
            "[\"https://ex01.corp.contoso.com\"]",
            "",
            "sso = \"kerberos\"",
            kerberos,
        )
    }

    fn load_with(text: &str, secrets: &MapSecrets) -> Result<Config, Vec<String>> {
        Config::from_toml(text, secrets).map_err(|e| e.iter().map(ToString::to_string).collect())
    }

    fn refused_with(text: &str, secrets: &MapSecrets, expected: &[&str]) {
        let errors = load_with(text, secrets).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| expected.iter().all(|part| e.contains(part))),
            "no error containing {expected:?} in {errors:#?}"
        );
    }

    #[test]
    fn a_kerberos_route_and_its_section_are_accepted_with_defaults() {
        let config = load_with(&https_route(KERBEROS), &good_keytab()).unwrap();
        assert_eq!(config.routes[0].sso, Sso::Kerberos);
        assert_eq!(
            config.sso.kerberos,
            Some(KerberosConfig {
                realm: "CORP.CONTOSO.COM".into(),
                kdc: vec![],
                principal: "svc-mfagw@CORP.CONTOSO.COM".into(),
                keytab: KEYTAB.into(),
                user: KerberosUser::Upn,
                ticket_lifetime: Duration::from_secs(10 * 3600),
            })
        );
        let upstream = &config.upstreams[0];
        assert_eq!(
            upstream.kerberos_spn_for(&upstream.servers[0]),
            "HTTP/ex01.corp.contoso.com"
        );
    }

    #[test]
    fn every_key_is_read_and_the_spn_follows_the_tls_server_name() {
        let text = kerberos_config(
            "[\"https://10.0.0.5:444\"]",
            "tls_server_name = \"Mail.Contoso.com\"",
            "sso = \"kerberos\"",
            &format!("[sso.kerberos]\nrealm = \"CORP.CONTOSO.COM\"\nkdc = [\"dc01.corp.contoso.com\", \"10.0.0.2:1088\", \"[2001:db8::2]\"]\nprincipal = \"svc-mfagw\"\nkeytab = {{ file = \"{KEYTAB}\" }}\nuser = \"upn\"\nticket_lifetime = \"1h\"\n"),
        );
        let config = load_with(&text, &good_keytab()).unwrap();
        let kerberos = config.sso.kerberos.unwrap();
        assert_eq!(
            kerberos.kdc,
            [
                "dc01.corp.contoso.com:88",
                "10.0.0.2:1088",
                "[2001:db8::2]:88"
            ]
        );
        assert_eq!(kerberos.principal, "svc-mfagw@CORP.CONTOSO.COM");
        assert_eq!(kerberos.ticket_lifetime, Duration::from_secs(3600));
        let upstream = &config.upstreams[0];
        assert_eq!(
            upstream.kerberos_spn_for(&upstream.servers[0]),
            "HTTP/mail.contoso.com"
        );

        let text = kerberos_config(
            "[\"https://ex01.corp.contoso.com\"]",
            "kerberos_spn = \"HTTP/mail.contoso.com\"",
            "sso = \"kerberos\"",
            KERBEROS,
        );
        let config = load_with(&text, &good_keytab()).unwrap();
        let upstream = &config.upstreams[0];
        assert_eq!(
            upstream.kerberos_spn_for(&upstream.servers[0]),
            "HTTP/mail.contoso.com"
        );
    }

    #[test]
    fn a_principal_the_keytab_lacks_is_refused_with_the_keytab_path() {
        let keytab = keytab_secrets(&[("HTTP/gw.corp.contoso.com@CORP.CONTOSO.COM", 2, 18)]);
        refused_with(
            &https_route(KERBEROS),
            &keytab,
            &[
                "sso.kerberos.keytab",
                KEYTAB,
                "has no key for sso.kerberos.principal \"svc-mfagw@CORP.CONTOSO.COM\"",
                "HTTP/gw.corp.contoso.com@CORP.CONTOSO.COM",
            ],
        );
        let other_case = keytab_secrets(&[("SVC-MFAGW@CORP.CONTOSO.COM", 2, 18)]);
        refused_with(
            &https_route(KERBEROS),
            &other_case,
            &["sso.kerberos.keytab", "compares names exactly"],
        );
    }

    #[test]
    fn a_keytab_that_is_missing_or_not_a_keytab_is_refused() {
        refused_with(
            &https_route(KERBEROS),
            &secrets(),
            &["sso.kerberos.keytab", "cannot read keytab file", KEYTAB],
        );
        let pem = secrets().with_binary_file(KEYTAB, b"-----BEGIN".to_vec());
        refused_with(
            &https_route(KERBEROS),
            &pem,
            &["sso.kerberos.keytab", "is not a keytab file"],
        );
        refused_with(
            &https_route(&KERBEROS.replace(
                &format!("{{ file = \"{KEYTAB}\" }}"),
                "{ env = \"KEYTAB\" }",
            )),
            &good_keytab(),
            &["sso.kerberos.keytab", "binary file"],
        );
    }

    #[test]
    fn a_keytab_with_only_rc4_keys_is_a_warning() {
        let rc4 = keytab_secrets(&[("svc-mfagw@CORP.CONTOSO.COM", 2, 23)]);
        let text = https_route(KERBEROS);
        assert!(load_with(&text, &rc4).is_ok());
        let (_, warnings) =
            crate::config::validate::check(crate::config::raw::parse(&text).unwrap(), &text, &rc4);
        assert!(
            warnings
                .iter()
                .any(|w| w.to_string().contains("only arcfour-hmac (RC4) keys")),
            "{warnings:#?}"
        );
    }

    #[test]
    fn realm_principal_kdc_user_and_lifetime_are_checked() {
        let section = |body: &str| {
            https_route(&format!(
                "[sso.kerberos]\nkeytab = {{ file = \"{KEYTAB}\" }}\n{body}"
            ))
        };
        refused_with(
            &section("realm = \"corp.contoso.com\"\nprincipal = \"svc-mfagw\""),
            &good_keytab(),
            &["sso.kerberos.realm", "upper case", "\"CORP.CONTOSO.COM\""],
        );
        refused_with(
            &section("realm = \"CORP.CONTOSO.COM\"\nprincipal = \"svc-mfagw@FABRIKAM.COM\""),
            &good_keytab(),
            &["sso.kerberos.principal", "not sso.kerberos.realm"],
        );
        refused_with(
            &section("realm = \"CORP.CONTOSO.COM\"\nprincipal = \"svc mfagw\""),
            &good_keytab(),
            &["sso.kerberos.principal", "not a principal name"],
        );
        refused_with(
            &section("realm = \"CORP.CONTOSO.COM\"\nprincipal = \"svc-mfagw\"\nkdc = []"),
            &good_keytab(),
            &["sso.kerberos.kdc", "leave kdc out"],
        );
        refused_with(
            &section("realm = \"CORP.CONTOSO.COM\"\nprincipal = \"svc-mfagw\"\nkdc = [\"tcp://dc01\", \"dc02:eighty\"]"),
            &good_keytab(),
            &["sso.kerberos.kdc[0]", "not a KDC address"],
        );
        refused_with(
            &section("realm = \"CORP.CONTOSO.COM\"\nprincipal = \"svc-mfagw\"\nkdc = [\"dc01\", \"dc02:eighty\"]"),
            &good_keytab(),
            &["sso.kerberos.kdc[1]", "not a port number"],
        );
        refused_with(
            &section("realm = \"CORP.CONTOSO.COM\"\nprincipal = \"svc-mfagw\"\nuser = \"email\""),
            &good_keytab(),
            &[
                "sso.kerberos.user",
                "\"upn\" or \"onprem_sam_account_name\"",
            ],
        );
        refused_with(
            &section("realm = \"CORP.CONTOSO.COM\"\nprincipal = \"svc-mfagw\"\nuser = \"onprem_sam_account_name\""),
            &good_keytab(),
            &["sso.kerberos.user", "needs oidc.account_name_claim"],
        );
        refused_with(
            &section(
                "realm = \"CORP.CONTOSO.COM\"\nprincipal = \"svc-mfagw\"\nticket_lifetime = \"0s\"",
            ),
            &good_keytab(),
            &["sso.kerberos.ticket_lifetime", "greater than 0"],
        );
    }

    #[test]
    fn the_sam_account_name_is_accepted_with_the_account_name_claim() {
        let text = kerberos_config(
            "[\"https://ex01.corp.contoso.com\"]",
            "",
            "sso = \"kerberos\"",
            &format!("{KERBEROS}user = \"onprem_sam_account_name\"\n"),
        )
        .replace(
            "[oidc]\n",
            "[oidc]\naccount_name_claim = \"samaccountname\"\n",
        );
        let config = load_with(&text, &good_keytab()).unwrap();
        assert_eq!(
            config.sso.kerberos.unwrap().user,
            KerberosUser::OnpremSamAccountName
        );
    }

    #[test]
    fn sso_kerberos_needs_mfa_its_section_and_an_https_upstream() {
        refused_with(
            &https_route(""),
            &good_keytab(),
            &["routes[0].sso", "[sso.kerberos]"],
        );
        refused_with(
            &kerberos_config(
                "[\"http://ex01.corp.contoso.com\"]",
                "",
                "sso = \"kerberos\"",
                KERBEROS,
            ),
            &good_keytab(),
            &["routes[0].sso", "https://", "Extended Protection"],
        );
        let public = https_route(KERBEROS).replace("access = \"mfa\"", "access = \"public\"");
        refused_with(
            &public,
            &good_keytab(),
            &["routes[0].sso", "needs access = \"mfa\""],
        );
    }

    #[test]
    fn a_kerberos_spn_that_is_not_one_is_refused() {
        for spn in [
            "mail.contoso.com",
            "HTTP/",
            "HTTP/mail.contoso.com@CORP.CONTOSO.COM",
        ] {
            let text = kerberos_config(
                "[\"https://ex01.corp.contoso.com\"]",
                &format!("kerberos_spn = {spn:?}"),
                "sso = \"kerberos\"",
                KERBEROS,
            );
            refused_with(
                &text,
                &good_keytab(),
                &[
                    "upstreams.exchange.kerberos_spn",
                    "not a service principal name",
                ],
            );
        }
    }

    #[test]
    fn a_kerberos_section_no_route_uses_is_a_warning() {
        let text = kerberos_config("[\"https://ex01.corp.contoso.com\"]", "", "", KERBEROS);
        assert!(load_with(&text, &good_keytab()).is_ok());
        let (_, warnings) = crate::config::validate::check(
            crate::config::raw::parse(&text).unwrap(),
            &text,
            &good_keytab(),
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.to_string().contains("sso.kerberos")
                    && w.to_string().contains("no route has sso = \"kerberos\"")),
            "{warnings:#?}"
        );
    }
}
