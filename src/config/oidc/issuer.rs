//! `oidc.issuer` and `oidc.discovery_url`: which issuers can be trusted, and what an Entra
//! issuer says about its tenant and token version.

use std::net::IpAddr;

use super::super::validate::is_guid;
use super::TokenVersion;

/// A tenant-specific issuer, understood.
pub(in crate::config) struct Issuer {
    /// As tokens carry it (for Entra issuers, rewritten in the exact form Entra uses).
    pub(in crate::config) issuer: String,
    pub(in crate::config) version: TokenVersion,
    /// The tenant id (`tid`) in the issuer's path, in lower case.
    pub(in crate::config) tenant: Option<String>,
    /// Accepted, but probably not what was meant.
    pub(in crate::config) warning: Option<String>,
}

impl Issuer {
    pub(super) fn discovery_url(&self) -> String {
        match (self.version, &self.tenant) {
            // The v1.0 metadata is served by login.microsoftonline.com, not by the issuer host.
            (TokenVersion::EntraV1, Some(tid)) => {
                format!("https://login.microsoftonline.com/{tid}/.well-known/openid-configuration")
            }
            _ => format!(
                "{}/.well-known/openid-configuration",
                self.issuer.trim_end_matches('/')
            ),
        }
    }
}

/// Entra's multi-tenant endpoints: they accept users of any tenant, so a token from any
/// organisation (including one an attacker creates for free) would pass.
const MULTI_TENANT_SEGMENTS: [&str; 3] = ["common", "organizations", "consumers"];

/// Understands `oidc.issuer`, or says why it cannot be trusted.
pub(in crate::config) fn parse_issuer(issuer: &str) -> Result<Issuer, String> {
    let uri = check_provider_url(issuer, false)?;
    let host = uri.host().unwrap_or_default().to_ascii_lowercase();
    let path = uri.path();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if let Some(first) = segments.first() {
        if MULTI_TENANT_SEGMENTS.contains(&first.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{issuer:?} names Entra's multi-tenant endpoint {first:?}: users of any tenant could sign in, including tenants anyone can create; use your tenant-specific issuer https://sts.windows.net/<tenant-id>/ (Entra admin center → Overview → Tenant ID)"
            ));
        }
    }
    let version = if host == "sts.windows.net" {
        TokenVersion::EntraV1
    } else if host == "login.microsoftonline.com" && path.ends_with("/v2.0") {
        TokenVersion::EntraV2
    } else {
        TokenVersion::Other
    };
    let expected = match version {
        TokenVersion::EntraV1 => "https://sts.windows.net/<tenant-id>/",
        TokenVersion::EntraV2 => "https://login.microsoftonline.com/<tenant-id>/v2.0",
        TokenVersion::Other => {
            let tenant = segments
                .iter()
                .find(|s| is_guid(s))
                .map(|s| s.to_ascii_lowercase());
            let warning = (host == "login.microsoftonline.com").then(|| {
                "Entra tokens never carry this issuer: v1.0 tokens carry https://sts.windows.net/<tenant-id>/ and v2.0 tokens https://login.microsoftonline.com/<tenant-id>/v2.0; sign-in will fail unless the provider's metadata names exactly this issuer".to_owned()
            });
            return Ok(Issuer {
                issuer: issuer.to_owned(),
                version,
                tenant,
                warning,
            });
        }
    };
    let tid = segments.first().copied().unwrap_or_default();
    let shape = match version {
        TokenVersion::EntraV1 => format!("/{tid}/"),
        _ => format!("/{tid}/v2.0"),
    };
    if path != shape || uri.port().is_some() {
        return Err(format!(
            "{issuer:?} is not in the form Entra's tokens carry; write {expected}"
        ));
    }
    if !is_guid(tid) {
        return Err(format!(
            "{tid:?} is not a tenant id: Entra issuers name the tenant by its id, a GUID (Entra admin center → Overview → Tenant ID); write {expected}"
        ));
    }
    let tid = tid.to_ascii_lowercase();
    let issuer = match version {
        TokenVersion::EntraV1 => format!("https://sts.windows.net/{tid}/"),
        _ => format!("https://login.microsoftonline.com/{tid}/v2.0"),
    };
    Ok(Issuer {
        issuer,
        version,
        tenant: Some(tid),
        warning: None,
    })
}

/// The issuer or the metadata URL: `https://`, or `http://` on a loopback address only (tests
/// and `mfa-gateway demo`). Over plain HTTP anyone on the path could replace the signing keys.
pub(super) fn check_provider_url(url: &str, query_allowed: bool) -> Result<http::Uri, String> {
    if url.contains('#') {
        return Err(format!("{url:?} must not have a fragment (#…)"));
    }
    let not_a_url =
        || format!("{url:?} is not a URL; write it like \"https://sts.windows.net/<tenant-id>/\"");
    let uri: http::Uri = url.parse().map_err(|_| not_a_url())?;
    let authority = uri.authority().ok_or_else(not_a_url)?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "{url:?} must not contain a user name or password (…@)"
        ));
    }
    if !query_allowed && uri.query().is_some() {
        return Err(format!("{url:?}: an issuer has no query (?…)"));
    }
    match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback_host(authority.host()) => Ok(uri),
        _ => Err(format!(
            "{url:?} must start with https://; http:// is accepted only on loopback addresses (127.0.0.1, ::1, localhost), for tests and `mfa-gateway demo`"
        )),
    }
}

fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;
    use crate::config::TokenVersion;
    use crate::session::EntraId;

    #[test]
    fn issuer_over_plain_http_is_refused_except_on_loopback() {
        refused(
            &oidc_issuer(&format!("http://sts.windows.net/{TENANT}/"), ""),
            &[
                "oidc.issuer (line 14)",
                "must start with https://",
                "only on loopback addresses",
            ],
        );
        refused(
            &oidc_issuer("ftp://idp.contoso.com/", ""),
            &["oidc.issuer", "must start with https://"],
        );
        for issuer in [
            format!("http://127.0.0.1:9000/{TENANT}/"),
            format!("http://127.8.9.10/{TENANT}/v2.0"),
            format!("http://localhost:9000/{TENANT}/"),
            format!("http://[::1]:9000/{TENANT}/"),
        ] {
            let config = load(&oidc_issuer(&issuer, "")).unwrap_or_else(|e| panic!("{e:#?}"));
            let oidc = config.oidc.unwrap();
            assert_eq!(oidc.issuer, issuer);
            assert_eq!(oidc.token_version, TokenVersion::Other);
            assert_eq!(oidc.allowed_tenants, [EntraId::parse(TENANT)], "{issuer}");
        }
    }

    #[test]
    fn multi_tenant_issuer_is_refused_with_the_reason() {
        for issuer in [
            "https://sts.windows.net/common/",
            "https://login.microsoftonline.com/organizations/v2.0",
            "https://login.microsoftonline.com/Consumers/v2.0",
        ] {
            refused(
                &oidc_issuer(issuer, ""),
                &[
                    "oidc.issuer (line 14)",
                    "multi-tenant endpoint",
                    "users of any tenant could sign in",
                    "tenant-specific issuer https://sts.windows.net/<tenant-id>/",
                ],
            );
        }
    }

    #[test]
    fn token_version_and_discovery_url_follow_the_issuer() {
        let v2 = format!("https://login.microsoftonline.com/{TENANT}/v2.0");
        let text =
            oidc_issuer(&v2, "").replace("[session]", "[mfa]\nacrs_any_of = [\"c1\"]\n[session]");
        let oidc = load(&text).unwrap().oidc.unwrap();
        assert_eq!(oidc.token_version, TokenVersion::EntraV2);
        assert_eq!(
            oidc.discovery_url,
            format!("{v2}/.well-known/openid-configuration")
        );

        let other = "https://idp.contoso.com/realms/staff/";
        let oidc = load(&oidc_issuer(other, "allowed_tenants = [\"staff\"]"))
            .unwrap()
            .oidc
            .unwrap();
        assert_eq!(oidc.token_version, TokenVersion::Other);
        assert_eq!(
            oidc.discovery_url,
            "https://idp.contoso.com/realms/staff/.well-known/openid-configuration"
        );
        assert_eq!(oidc.allowed_tenants, [EntraId::Text("staff".to_owned())]);
    }

    #[test]
    fn entra_issuer_is_kept_in_the_exact_form_its_tokens_carry() {
        let upper = TENANT.to_ascii_uppercase();
        let oidc = load(&oidc_issuer(
            &format!("https://STS.windows.net/{upper}/"),
            "",
        ))
        .unwrap()
        .oidc
        .unwrap();
        assert_eq!(oidc.issuer, format!("https://sts.windows.net/{TENANT}/"));
        assert_eq!(oidc.allowed_tenants, [EntraId::parse(TENANT)]);
    }

    #[test]
    fn entra_issuer_not_in_the_form_of_its_tokens_is_refused() {
        for issuer in [
            format!("https://sts.windows.net/{TENANT}"),
            format!("https://sts.windows.net/{TENANT}/v2.0"),
            format!("https://sts.windows.net:443/{TENANT}/"),
            format!("https://login.microsoftonline.com/{TENANT}/oauth2/v2.0"),
        ] {
            refused(
                &oidc_issuer(&issuer, ""),
                &[
                    "oidc.issuer (line 14)",
                    "not in the form Entra's tokens carry",
                ],
            );
        }
    }

    #[test]
    fn entra_issuer_naming_its_tenant_by_domain_is_refused() {
        refused(
            &oidc_issuer("https://sts.windows.net/contoso.onmicrosoft.com/", ""),
            &[
                "oidc.issuer (line 14)",
                "\"contoso.onmicrosoft.com\" is not a tenant id",
                "GUID",
            ],
        );
        refused(
            &oidc_issuer("https://login.microsoftonline.com/contoso.com/v2.0", ""),
            &[
                "is not a tenant id",
                "https://login.microsoftonline.com/<tenant-id>/v2.0",
            ],
        );
    }

    #[test]
    fn issuer_with_a_query_fragment_or_password_is_refused() {
        for (issuer, what) in [
            (format!("https://sts.windows.net/{TENANT}/?x=1"), "no query"),
            (format!("https://sts.windows.net/{TENANT}/#x"), "fragment"),
            (
                format!("https://me:pw@sts.windows.net/{TENANT}/"),
                "user name or password",
            ),
            ("sts.windows.net".to_owned(), "https://"),
        ] {
            refused(&oidc_issuer(&issuer, ""), &["oidc.issuer", what]);
        }
    }

    #[test]
    fn login_microsoftonline_issuer_without_v2_is_accepted_with_a_warning() {
        let text = oidc_issuer(&format!("https://login.microsoftonline.com/{TENANT}/"), "");
        let oidc = load(&text).unwrap().oidc.unwrap();
        assert_eq!(oidc.token_version, TokenVersion::Other);
        let warnings = warnings(&text);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("oidc.issuer (line 14): Entra tokens never carry this issuer"),
            "{warnings:?}"
        );
    }

    #[test]
    fn discovery_url_may_be_set_but_must_be_https() {
        let url = format!(
            "https://login.microsoftonline.com/{TENANT}/.well-known/openid-configuration?appid={CLIENT}"
        );
        let oidc = load(&with_oidc(&format!("{OIDC}discovery_url = {url:?}")))
            .unwrap()
            .oidc
            .unwrap();
        assert_eq!(oidc.discovery_url, url);
        refused(
            &with_oidc(&format!(
                "{OIDC}discovery_url = \"http://login.microsoftonline.com/{TENANT}/.well-known/openid-configuration\""
            )),
            &["oidc.discovery_url (line 17)", "must start with https://"],
        );
    }
}
