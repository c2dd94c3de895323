//! `[oidc]`: the gateway as a relying party registered in Entra ID.

mod client_auth;
mod issuer;

pub use client_auth::ClientAuth;
pub(super) use issuer::parse_issuer;

use std::time::Duration;

use toml::Spanned;

use super::defaults::{
    DEFAULT_CLOCK_SKEW, DEFAULT_LOGIN_TIMEOUT, DEFAULT_RESPONSE_MODE, DEFAULT_SCOPES,
};
use super::raw::{RawOidc, Text};
use super::secret::Secrets;
use super::validate::{is_guid, Checker};
use crate::session::EntraId;
use issuer::{check_provider_url, Issuer};

/// `[oidc]`: the relying party registered in Entra ID. Present whenever a route has
/// `access = "mfa"`, together with `[session]`.
#[derive(Clone)]
pub struct OidcConfig {
    /// `issuer`: the tenant-specific issuer, exactly as tokens carry it, e.g.
    /// `https://sts.windows.net/<tid>/` (v1.0) or `https://login.microsoftonline.com/<tid>/v2.0`.
    pub issuer: String,
    /// Which Entra token version the issuer implies; decides whether `amr` can be relied on.
    pub token_version: TokenVersion,
    /// Extension `discovery_url`: where the provider's metadata is read. Default: for a v1.0
    /// issuer `https://login.microsoftonline.com/<tid>/.well-known/openid-configuration`,
    /// otherwise `<issuer>/.well-known/openid-configuration`.
    pub discovery_url: String,
    /// `client_id`: the Application (client) ID, lower-cased for Entra as `aud` carries it.
    pub client_id: String,
    /// `client_secret` or `client_certificate` (with `client_secret_method`).
    pub client_auth: ClientAuth,
    /// `scopes`; always contains `openid`.
    pub scopes: Vec<String>,
    /// `allowed_tenants`: the tenant ids (`tid`) accepted; default: the tenant in the issuer.
    pub allowed_tenants: Vec<EntraId>,
    /// `clock_skew`: tolerance for `exp`, `nbf` and `iat`.
    pub clock_skew: Duration,
    /// Extension `response_mode`: `form_post` (default, recommended by Microsoft for web apps)
    /// or `query`.
    pub response_mode: ResponseMode,
    /// Extension `login_timeout`: how long a pending sign-in (the login-transaction cookie)
    /// stays valid.
    pub login_timeout: Duration,
    /// Extension `account_name_claim`: the ID-token claim that carries the user's on-premises
    /// account name (sAMAccountName), for Exchange's forms logon in `DOMAIN\name` or bare
    /// `name` form. `None`: only the UPN is accepted there.
    pub account_name_claim: Option<String>,
    /// Extension `account_domains`: the domain names accepted before the backslash of
    /// `DOMAIN\name` in Exchange's forms logon (NetBIOS or DNS names, compared without regard
    /// to case). Empty: the `DOMAIN\name` form is refused.
    pub account_domains: Vec<String>,
}

impl std::fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_auth", &self.client_auth)
            .field("scopes", &self.scopes)
            .field("allowed_tenants", &self.allowed_tenants)
            .finish_non_exhaustive()
    }
}

/// The Entra token version an issuer implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenVersion {
    /// `https://sts.windows.net/<tid>/`: ID tokens carry `amr`.
    EntraV1,
    /// `https://login.microsoftonline.com/<tid>/v2.0`: observed without `amr` (not a documented
    /// contract either way); MFA only through `acrs`.
    EntraV2,
    /// Any other issuer (a test provider on loopback, another OpenID provider).
    Other,
}

/// `oidc.response_mode`: how Entra returns the sign-in to `/_gateway/callback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseMode {
    /// `"form_post"`: a cross-site POST, so the login-transaction cookie is `SameSite=None`.
    FormPost,
    /// `"query"`: a GET with the code in the query string.
    Query,
}

impl Checker {
    pub(super) fn oidc(&mut self, section: &Spanned<RawOidc>, secrets: &dyn Secrets) -> OidcConfig {
        let oidc = section.get_ref();
        let issuer = match parse_issuer(oidc.issuer.get_ref()) {
            Ok(issuer) => {
                if let Some(warning) = &issuer.warning {
                    self.warning("oidc.issuer", &oidc.issuer, warning.clone());
                }
                Some(issuer)
            }
            Err(message) => {
                self.error("oidc.issuer", &oidc.issuer, message);
                None
            }
        };
        let token_version = issuer.as_ref().map_or(TokenVersion::Other, |i| i.version);
        let entra = token_version != TokenVersion::Other;

        let discovery_url = match &oidc.discovery_url {
            Some(url) => {
                if let Err(message) = check_provider_url(url.get_ref(), true) {
                    self.error("oidc.discovery_url", url, message);
                }
                url.get_ref().clone()
            }
            None => issuer
                .as_ref()
                .map(Issuer::discovery_url)
                .unwrap_or_default(),
        };

        let client_id = oidc.client_id.get_ref().trim();
        if client_id.is_empty() {
            self.error(
                "oidc.client_id",
                &oidc.client_id,
                "must be the Application (client) ID of the app registration, not empty",
            );
        } else if entra && !is_guid(client_id) {
            self.error(
                "oidc.client_id",
                &oidc.client_id,
                format!("{client_id:?} is not an Application (client) ID: Entra identifies each app registration by a GUID (Entra admin center → App registrations → the application → Overview)"),
            );
        }

        let client_auth = self.client_auth(section, secrets);
        let scopes = self.scopes(oidc.scopes.as_ref());
        let allowed_tenants = self.allowed_tenants(section, issuer.as_ref(), entra);
        let clock_skew = self.duration(
            "oidc.clock_skew",
            oidc.clock_skew.as_ref(),
            DEFAULT_CLOCK_SKEW,
            true,
        );
        let response_mode = match &oidc.response_mode {
            None => DEFAULT_RESPONSE_MODE,
            Some(mode) => match mode.get_ref().as_str() {
                "form_post" => ResponseMode::FormPost,
                "query" => ResponseMode::Query,
                other => {
                    let message = format!(
                        "response_mode = {other:?} is not one of \"form_post\" or \"query\""
                    );
                    self.error("oidc.response_mode", mode, message);
                    DEFAULT_RESPONSE_MODE
                }
            },
        };
        let login_timeout = self.duration(
            "oidc.login_timeout",
            oidc.login_timeout.as_ref(),
            DEFAULT_LOGIN_TIMEOUT,
            false,
        );

        let (account_name_claim, account_domains) = self.account_name(oidc);

        OidcConfig {
            issuer: issuer
                .map(|i| i.issuer)
                .unwrap_or_else(|| oidc.issuer.get_ref().clone()),
            token_version,
            discovery_url,
            // Entra writes the application id in lower case in `aud`, which must match it.
            client_id: if entra {
                client_id.to_ascii_lowercase()
            } else {
                client_id.to_owned()
            },
            client_auth,
            scopes,
            allowed_tenants,
            clock_skew,
            response_mode,
            login_timeout,
            account_name_claim,
            account_domains,
        }
    }

    /// `account_name_claim` and `account_domains`: the on-premises account name for Exchange's
    /// forms logon.
    fn account_name(&mut self, oidc: &RawOidc) -> (Option<String>, Vec<String>) {
        let claim = oidc.account_name_claim.as_ref().and_then(|claim| {
            let name = claim.get_ref().trim();
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                self.error(
                    "oidc.account_name_claim",
                    claim,
                    format!("{:?} is not a claim name: write the name of the ID-token claim that carries the on-premises sAMAccountName, such as \"samaccountname\"", claim.get_ref()),
                );
                return None;
            }
            Some(name.to_owned())
        });
        let mut domains: Vec<String> = Vec::new();
        if let Some(list) = &oidc.account_domains {
            if claim.is_none() && oidc.account_name_claim.is_none() {
                self.error(
                    "oidc.account_domains",
                    list,
                    "needs oidc.account_name_claim: DOMAIN\\name is judged on the account name that claim carries",
                );
            }
            for (i, domain) in list.get_ref().iter().enumerate() {
                let text = domain.get_ref().trim();
                let valid = !text.is_empty()
                    && text
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
                if valid {
                    if !domains.iter().any(|d| d.eq_ignore_ascii_case(text)) {
                        domains.push(text.to_owned());
                    }
                } else {
                    self.error(
                        format!("oidc.account_domains[{i}]"),
                        domain,
                        format!("{:?} is not a domain name: write the NetBIOS name (\"CONTOSO\") or the DNS name (\"corp.contoso.com\") users type before the backslash", domain.get_ref()),
                    );
                }
            }
        }
        (claim, domains)
    }

    fn scopes(&mut self, scopes: Option<&Spanned<Vec<Text>>>) -> Vec<String> {
        let mut out: Vec<String> = match scopes {
            None => DEFAULT_SCOPES.map(str::to_owned).to_vec(),
            Some(list) => {
                let mut out: Vec<String> = Vec::new();
                for (i, scope) in list.get_ref().iter().enumerate() {
                    let text = scope.get_ref();
                    if text.is_empty() || !text.bytes().all(is_scope_byte) {
                        self.error(
                            format!("oidc.scopes[{i}]"),
                            scope,
                            format!("{text:?} is not a scope: a scope is one word without spaces, quotes or backslashes, such as \"email\""),
                        );
                    } else if !out.contains(text) {
                        out.push(text.clone());
                    }
                }
                out
            }
        };
        // Without `openid` the provider answers with plain OAuth 2.0 and no ID token: there
        // would be nothing to verify MFA in.
        if !out.iter().any(|s| s == "openid") {
            out.insert(0, "openid".to_owned());
        }
        out
    }

    fn allowed_tenants(
        &mut self,
        section: &Spanned<RawOidc>,
        issuer: Option<&Issuer>,
        entra: bool,
    ) -> Vec<EntraId> {
        let issuer_tenant = issuer.and_then(|i| i.tenant.clone());
        let Some(list) = &section.get_ref().allowed_tenants else {
            if issuer.is_some() && issuer_tenant.is_none() {
                self.error(
                    "oidc",
                    section,
                    "needs allowed_tenants: the issuer has no tenant id in its path, so list the tenant ids (the tid claim) whose users may sign in",
                );
            }
            return issuer_tenant
                .iter()
                .map(|tid| EntraId::parse(tid))
                .collect();
        };
        if list.get_ref().is_empty() {
            self.error(
                "oidc.allowed_tenants",
                list,
                "must list at least one tenant id; leave allowed_tenants out to accept the issuer's own tenant",
            );
        }
        let mut out: Vec<EntraId> = Vec::new();
        for (i, tenant) in list.get_ref().iter().enumerate() {
            let text = tenant.get_ref().trim();
            if text.is_empty() {
                self.error(
                    format!("oidc.allowed_tenants[{i}]"),
                    tenant,
                    "must be a tenant id, not empty",
                );
                continue;
            }
            if entra && !is_guid(text) {
                self.error(
                    format!("oidc.allowed_tenants[{i}]"),
                    tenant,
                    format!("{text:?} is not a tenant id: the tid claim of Entra tokens is the tenant's GUID (Entra admin center → Overview → Tenant ID), never a domain name"),
                );
                continue;
            }
            // A GUID in any letter case is one tenant: Entra writes `tid` in lower case, an
            // administrator may copy it in upper case.
            let id = EntraId::parse(text);
            if !out.contains(&id) {
                out.push(id);
            }
        }
        if let (true, Some(tid)) = (entra, &issuer_tenant) {
            if !out.is_empty() && !out.contains(&EntraId::parse(tid)) {
                self.error(
                    "oidc.allowed_tenants",
                    list,
                    format!("does not contain {tid}, the tenant of the issuer: every ID token from a tenant-specific Entra issuer carries that tenant's tid, so no sign-in would be accepted"),
                );
            }
        }
        out
    }
}

/// RFC 6749 `scope-token` characters.
fn is_scope_byte(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::test_support::*;
    use crate::config::ResponseMode;
    use crate::session::EntraId;

    #[test]
    fn entra_client_id_must_be_an_application_id_and_is_kept_in_lower_case() {
        let secret = "client_secret = { file = \"/etc/mfa-gateway/client-secret\" }";
        let issuer = format!("issuer = \"https://sts.windows.net/{TENANT}/\"");
        refused(
            &with_oidc(&format!("{issuer}\nclient_id = \" \"\n{secret}")),
            &["oidc.client_id (line 15)", "not empty"],
        );
        refused(
            &with_oidc(&format!("{issuer}\nclient_id = \"mfa-gateway\"\n{secret}")),
            &[
                "oidc.client_id (line 15)",
                "is not an Application (client) ID",
            ],
        );
        let upper = with_oidc(&format!(
            "{issuer}\nclient_id = \"{}\"\n{secret}",
            CLIENT.to_ascii_uppercase()
        ));
        assert_eq!(load(&upper).unwrap().oidc.unwrap().client_id, CLIENT);
        // Another provider's client ids are its own business.
        let text = oidc_issuer(&format!("http://127.0.0.1:9000/{TENANT}/"), "")
            .replace(CLIENT, "gateway-test");
        assert_eq!(load(&text).unwrap().oidc.unwrap().client_id, "gateway-test");
    }

    #[test]
    fn scopes_always_include_openid() {
        let oidc = load(&with_oidc(&format!(
            "{OIDC}scopes = [\"email\", \"offline_access\", \"email\"]"
        )))
        .unwrap()
        .oidc
        .unwrap();
        assert_eq!(oidc.scopes, ["openid", "email", "offline_access"]);
        let oidc = load(&with_oidc(&format!(
            "{OIDC}scopes = [\"profile\", \"openid\"]"
        )))
        .unwrap()
        .oidc
        .unwrap();
        assert_eq!(oidc.scopes, ["profile", "openid"]);
    }

    #[test]
    fn scope_that_is_empty_or_has_a_space_is_refused() {
        for scope in ["", "openid profile", "a\"b"] {
            refused(
                &with_oidc(&format!("{OIDC}scopes = [\"email\", {scope:?}]")),
                &["oidc.scopes[1] (line 17)", "is not a scope"],
            );
        }
    }

    #[test]
    fn allowed_tenant_that_is_empty_or_not_a_tenant_id_is_refused() {
        refused(
            &with_oidc(&format!("{OIDC}allowed_tenants = [\"{TENANT}\", \"\"]")),
            &["oidc.allowed_tenants[1] (line 17)", "not empty"],
        );
        refused(
            &with_oidc(&format!(
                "{OIDC}allowed_tenants = [\"{TENANT}\", \"contoso.com\"]"
            )),
            &[
                "oidc.allowed_tenants[1] (line 17)",
                "\"contoso.com\" is not a tenant id",
            ],
        );
        refused(
            &with_oidc(&format!("{OIDC}allowed_tenants = []")),
            &["oidc.allowed_tenants (line 17)", "at least one tenant id"],
        );
    }

    #[test]
    fn allowed_tenants_without_the_tenant_of_the_entra_issuer_are_refused() {
        let other = "0a0b0c0d-1e1f-4a2b-8c3d-4e5f6a7b8c9d";
        refused(
            &with_oidc(&format!("{OIDC}allowed_tenants = [\"{other}\"]")),
            &[
                "oidc.allowed_tenants (line 17)",
                &format!("does not contain {TENANT}, the tenant of the issuer"),
            ],
        );
        let upper = TENANT.to_ascii_uppercase();
        let oidc = load(&with_oidc(&format!(
            "{OIDC}allowed_tenants = [\"{upper}\"]"
        )))
        .unwrap()
        .oidc
        .unwrap();
        assert_eq!(oidc.allowed_tenants, [EntraId::parse(TENANT)]);
    }

    #[test]
    fn issuer_without_a_tenant_in_its_path_needs_allowed_tenants() {
        refused(
            &oidc_issuer("http://127.0.0.1:9000/", ""),
            &[
                "oidc (line 13): needs allowed_tenants",
                "no tenant id in its path",
            ],
        );
    }

    #[test]
    fn response_mode_query_is_accepted_and_unknown_modes_refused() {
        let oidc = load(&with_oidc(&format!("{OIDC}response_mode = \"query\"")))
            .unwrap()
            .oidc
            .unwrap();
        assert_eq!(oidc.response_mode, ResponseMode::Query);
        refused(
            &with_oidc(&format!("{OIDC}response_mode = \"fragment\"")),
            &[
                "oidc.response_mode (line 17)",
                "\"fragment\" is not one of \"form_post\" or \"query\"",
            ],
        );
    }

    #[test]
    fn clock_skew_and_login_timeout_are_durations() {
        let oidc = load(&with_oidc(&format!(
            "{OIDC}clock_skew = \"0s\"\nlogin_timeout = \"5m\""
        )))
        .unwrap()
        .oidc
        .unwrap();
        assert_eq!(oidc.clock_skew, Duration::ZERO);
        assert_eq!(oidc.login_timeout, Duration::from_secs(300));
        refused(
            &with_oidc(&format!("{OIDC}login_timeout = \"0s\"")),
            &["oidc.login_timeout (line 17)", "must be greater than 0"],
        );
        refused(
            &with_oidc(&format!("{OIDC}clock_skew = \"2\"")),
            &["oidc.clock_skew (line 17)", "is not a duration"],
        );
    }

    #[test]
    fn account_name_claim_and_domains_are_read_for_the_forms_logon() {
        let oidc = load(&with_oidc(OIDC)).unwrap().oidc.unwrap();
        assert_eq!(oidc.account_name_claim, None);
        assert!(oidc.account_domains.is_empty());
        let oidc = load(&with_oidc(&format!(
            "{OIDC}account_name_claim = \"samaccountname\"\naccount_domains = [\"CONTOSO\", \"corp.contoso.com\", \"contoso\"]"
        )))
        .unwrap()
        .oidc
        .unwrap();
        assert_eq!(oidc.account_name_claim.as_deref(), Some("samaccountname"));
        assert_eq!(oidc.account_domains, ["CONTOSO", "corp.contoso.com"]);
    }

    #[test]
    fn account_domains_without_the_account_name_claim_are_refused() {
        refused(
            &with_oidc(&format!("{OIDC}account_domains = [\"CONTOSO\"]")),
            &[
                "oidc.account_domains (line 17)",
                "needs oidc.account_name_claim",
            ],
        );
    }

    #[test]
    fn account_name_claim_or_domain_that_is_not_a_name_is_refused() {
        refused(
            &with_oidc(&format!("{OIDC}account_name_claim = \"sam account\"")),
            &["oidc.account_name_claim (line 17)", "is not a claim name"],
        );
        refused(
            &with_oidc(&format!(
                "{OIDC}account_name_claim = \"samaccountname\"\naccount_domains = [\"CONTOSO\\\\\"]"
            )),
            &["oidc.account_domains[0] (line 18)", "is not a domain name"],
        );
    }
}
