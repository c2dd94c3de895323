//! How `[oidc]`, `[mfa]`, `[session]` and the policy keys of `access = "mfa"` routes fit
//! together: rules no single section can check alone.

use std::time::Duration;

use http::StatusCode;
use toml::Spanned;

use super::defaults::DEFAULT_UNAUTHENTICATED_STATUS;
use super::error::ConfigError;
use super::oidc::parse_issuer;
use super::raw::{RawConfig, RawRoute};
use super::validate::{is_guid, Checker};
use super::{Access, MfaConfig, OidcConfig, TokenVersion};
use crate::activity::BackgroundRequest;
use crate::session::Guid;

/// What the routes need to know about the sign-in sections.
pub(super) struct SignInSections<'a> {
    pub(super) oidc: bool,
    pub(super) session: bool,
    pub(super) mfa: &'a MfaConfig,
}

/// The keys of a route that refine `access = "mfa"`.
pub(super) struct RoutePolicy {
    pub(super) unauthenticated_status: StatusCode,
    pub(super) max_auth_age: Option<Duration>,
    pub(super) acrs_any_of: Vec<String>,
    pub(super) groups_any_of: Vec<Guid>,
    pub(super) background_requests: Vec<BackgroundRequest>,
}

impl Checker {
    /// The policy keys of one route. They refine `access = "mfa"` and mean nothing on a
    /// `public` or `deny` route, where leaving them would suggest a protection that is not there.
    pub(super) fn route_policy(
        &mut self,
        path: &str,
        route: &RawRoute,
        access: Option<Access>,
        mfa: &MfaConfig,
    ) -> RoutePolicy {
        let mut policy = RoutePolicy {
            unauthenticated_status: DEFAULT_UNAUTHENTICATED_STATUS,
            max_auth_age: None,
            acrs_any_of: Vec::new(),
            groups_any_of: Vec::new(),
            background_requests: Vec::new(),
        };
        if let Some(access @ (Access::Public | Access::Deny)) = access {
            let message = format!(
                "only applies to access = \"mfa\"; this route has access = {:?}",
                access.as_str()
            );
            let present = [
                (
                    "unauthenticated_status",
                    route.unauthenticated_status.as_ref().map(|v| self.line(v)),
                ),
                (
                    "max_auth_age",
                    route.max_auth_age.as_ref().map(|v| self.line(v)),
                ),
                (
                    "acrs_any_of",
                    route.acrs_any_of.as_ref().map(|v| self.line(v)),
                ),
                (
                    "groups_any_of",
                    route.groups_any_of.as_ref().map(|v| self.line(v)),
                ),
                (
                    "background_requests",
                    route.background_requests.as_ref().map(|v| self.line(v)),
                ),
            ];
            for (key, line) in present {
                if let Some(line) = line {
                    self.errors.push(
                        ConfigError::new(format!("{path}.{key}"), message.clone()).with_line(line),
                    );
                }
            }
            return policy;
        }

        if let Some(status) = &route.unauthenticated_status {
            let allowed = u16::try_from(*status.get_ref())
                .ok()
                .filter(|code| matches!(code, 401 | 440))
                .and_then(|code| StatusCode::from_u16(code).ok());
            match allowed {
                Some(code) => policy.unauthenticated_status = code,
                None => self.error(
                    format!("{path}.unauthenticated_status"),
                    status,
                    format!("unauthenticated_status = {} is not 401 or 440: 401 is the standard answer; 440 is what the script of Outlook on the web reads as \"session expired\" and reloads the page", status.get_ref()),
                ),
            }
        }
        if let Some(age) = &route.max_auth_age {
            let key = format!("{path}.max_auth_age");
            policy.max_auth_age = self.duration_value(&key, age, false);
            if let Some(d) = policy.max_auth_age {
                if d > mfa.max_auth_age {
                    self.warning(
                        key,
                        age,
                        format!(
                            "{} is longer than [mfa].max_auth_age ({}), which applies to every route, so it changes nothing; a route's max_auth_age can only be stricter",
                            humantime::format_duration(d),
                            humantime::format_duration(mfa.max_auth_age)
                        ),
                    );
                }
            }
        }
        if let Some(list) = &route.acrs_any_of {
            policy.acrs_any_of = self.auth_contexts(&format!("{path}.acrs_any_of"), list);
        }
        if let Some(list) = &route.background_requests {
            for (i, entry) in list.get_ref().iter().enumerate() {
                let key = format!("{path}.background_requests[{i}]");
                match BackgroundRequest::parse(entry.get_ref().trim()) {
                    Ok(parsed) => match route.path.get_ref().trim() {
                        route_path if !parsed.within(route_path) => self.error(
                            key,
                            entry,
                            format!("{:?} lies outside this route's path {route_path:?}: no request of the route could match it", entry.get_ref()),
                        ),
                        _ => policy.background_requests.push(parsed),
                    },
                    Err(problem) => self.error(key, entry, problem),
                }
            }
        }
        if let Some(list) = &route.groups_any_of {
            for (i, group) in list.get_ref().iter().enumerate() {
                let text = group.get_ref().trim();
                // The plain form the Entra admin center shows (`Guid::parse` also takes `{…}`).
                match Guid::parse(text).filter(|_| is_guid(text)) {
                    Some(id) => {
                        if !policy.groups_any_of.contains(&id) {
                            policy.groups_any_of.push(id);
                        }
                    }
                    None => self.error(
                        format!("{path}.groups_any_of[{i}]"),
                        group,
                        format!("{text:?} is not a group object id: tokens carry group ids, not names; write the group's Object ID (a GUID) from the Entra admin center"),
                    ),
                }
            }
        }
        policy
    }

    /// Rules that join the sign-in sections and the routes.
    pub(super) fn sign_in_together(
        &mut self,
        raw: &RawConfig,
        oidc: Option<&OidcConfig>,
        mfa: &MfaConfig,
    ) {
        let routes = raw.routes.as_deref().unwrap_or_default();
        let mfa_routes: Vec<(usize, &RawRoute)> = routes
            .iter()
            .map(Spanned::get_ref)
            .enumerate()
            .filter(|(_, r)| r.access.get_ref() == "mfa")
            .collect();

        // With an mfa route, the route's own error already names the missing section.
        if mfa_routes.is_empty() {
            match (&raw.oidc, &raw.session) {
                (Some(oidc), None) => self.error(
                    "oidc",
                    oidc,
                    "needs [session] too: the sealed session cookie is what remembers a sign-in",
                ),
                (None, Some(session)) => self.error(
                    "session",
                    session,
                    "needs [oidc] too: sessions are made by signing in through Entra ID",
                ),
                _ => {}
            }
            if let Some(oidc) = &raw.oidc {
                self.warning(
                    "oidc",
                    oidc,
                    "no route has access = \"mfa\", so nobody is asked to sign in",
                );
            } else if let Some(section) = &raw.mfa {
                self.warning(
                    "mfa",
                    section,
                    "has no effect: there is no [oidc] and no route has access = \"mfa\"",
                );
            }
        }

        // Entra v2.0 ID tokens never carry `amr`: only an `acrs` authentication context can
        // prove MFA, so a route with neither would refuse every sign-in.
        let (Some(oidc), Some(raw_oidc)) = (oidc, &raw.oidc) else {
            return;
        };
        if oidc.token_version != TokenVersion::EntraV2 || !mfa.acrs_any_of.is_empty() {
            return;
        }
        let tid = parse_issuer(&oidc.issuer)
            .ok()
            .and_then(|i| i.tenant)
            .unwrap_or_else(|| "<tenant-id>".to_owned());
        let sets_acrs = |r: &RawRoute| {
            r.acrs_any_of
                .as_ref()
                .is_some_and(|l| !l.get_ref().is_empty())
        };
        if !routes.iter().any(|r| sets_acrs(r.get_ref())) {
            self.error(
                "oidc.issuer",
                &raw_oidc.get_ref().issuer,
                format!("Entra v2.0 ID tokens carry no amr claim in observed sign-ins (not a documented contract), so MFA could not be verified: use the v1.0 issuer https://sts.windows.net/{tid}/ or set mfa.acrs_any_of to an authentication context"),
            );
            return;
        }
        for (i, route) in mfa_routes {
            if !sets_acrs(route) {
                self.error(
                    format!("routes[{i}].access"),
                    &route.access,
                    format!("with the Entra v2.0 issuer, which puts no amr claim in ID tokens, this route has no way to verify MFA: set acrs_any_of on it or in [mfa], or use the v1.0 issuer https://sts.windows.net/{tid}/"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::test_support::*;
    use crate::config::{Access, ClientAuth, MfaConfig, ResponseMode, TokenVersion};
    use crate::session::{EntraId, Guid};

    #[test]
    fn sign_in_configuration_is_accepted_with_its_defaults() {
        let config = load(&with_oidc(OIDC)).unwrap_or_else(|e| panic!("{e:#?}"));
        let oidc = config.oidc.unwrap();
        assert_eq!(oidc.issuer, format!("https://sts.windows.net/{TENANT}/"));
        assert_eq!(oidc.token_version, TokenVersion::EntraV1);
        assert_eq!(
            oidc.discovery_url,
            format!("https://login.microsoftonline.com/{TENANT}/.well-known/openid-configuration")
        );
        assert_eq!(oidc.client_id, CLIENT);
        match &oidc.client_auth {
            ClientAuth::Secret { secret, basic } => {
                assert_eq!(secret, "client-secret-from-file");
                assert!(!basic);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(oidc.scopes, ["openid", "profile", "email"]);
        assert_eq!(oidc.allowed_tenants, [EntraId::parse(TENANT)]);
        assert_eq!(oidc.clock_skew, Duration::from_secs(120));
        assert_eq!(oidc.response_mode, ResponseMode::FormPost);
        assert_eq!(oidc.login_timeout, Duration::from_secs(600));

        assert_eq!(config.mfa, MfaConfig::default());
        assert_eq!(config.mfa.amr_any_of, ["mfa", "ngcmfa"]);
        assert!(config.mfa.acrs_any_of.is_empty());
        assert_eq!(config.mfa.max_auth_age, Duration::from_secs(12 * 3600));

        let session = config.session.unwrap();
        assert_eq!(session.cookie_name, "__Host-mfagw");
        assert_eq!(session.keys.len(), 1);
        assert_eq!(session.keys[0].len(), 32);
        assert_eq!(session.lifetime, Duration::from_secs(10 * 3600));
        assert_eq!(session.idle_timeout, Duration::from_secs(3600));

        let route = &config.routes[0];
        assert_eq!(route.access, Access::Mfa);
        assert_eq!(route.unauthenticated_status, 401);
        assert_eq!(route.max_auth_age, None);
        assert!(route.acrs_any_of.is_empty() && route.groups_any_of.is_empty());
        assert!(warnings(&with_oidc(OIDC)).is_empty());
    }

    #[test]
    fn oidc_without_session_or_session_without_oidc_is_refused() {
        let oidc_only = valid_with(&format!("[oidc]\n{OIDC}"));
        refused(
            &oidc_only,
            &["oidc (line 12): needs [session] too", "remembers a sign-in"],
        );
        let session_only = valid_with(&format!("[session]\n{SESSION}"));
        refused(&session_only, &["session (line 12): needs [oidc] too"]);
    }

    #[test]
    fn oidc_without_an_mfa_route_is_only_a_warning() {
        let text = valid_with(&format!("[oidc]\n{OIDC}\n[session]\n{SESSION}"));
        let config = load(&text).unwrap();
        assert!(config.oidc.is_some() && config.session.is_some());
        assert_eq!(
            warnings(&text),
            ["oidc (line 12): no route has access = \"mfa\", so nobody is asked to sign in"]
        );
    }

    #[test]
    fn mfa_section_without_sign_in_is_only_a_warning() {
        let text = valid_with("[mfa]\nmax_auth_age = \"8h\"\n");
        let config = load(&text).unwrap();
        assert_eq!(config.mfa.max_auth_age, Duration::from_secs(8 * 3600));
        assert_eq!(
            warnings(&text),
            ["mfa (line 12): has no effect: there is no [oidc] and no route has access = \"mfa\""]
        );
    }

    #[test]
    fn entra_v2_issuer_without_an_authentication_context_is_refused() {
        let v2 = format!("https://login.microsoftonline.com/{TENANT}/v2.0");
        assert_eq!(
            errors(&oidc_issuer(&v2, "")),
            [format!("oidc.issuer (line 14): Entra v2.0 ID tokens carry no amr claim in observed sign-ins (not a documented contract), so MFA could not be verified: use the v1.0 issuer https://sts.windows.net/{TENANT}/ or set mfa.acrs_any_of to an authentication context")]
        );
        // An authentication context on the route itself is a way to verify MFA there …
        let text = signed_in(
            "acrs_any_of = [\"c2\"]",
            &format!(
                "issuer = {v2:?}\nclient_id = \"{CLIENT}\"\nclient_secret = {{ file = \"/etc/mfa-gateway/client-secret\" }}"
            ),
            &format!("[session]\n{SESSION}"),
        );
        assert!(load(&text).is_ok(), "{:?}", load(&text).err());
        // … but a second mfa route without one could never be entered.
        let text = format!(
            "{text}\n[[routes]]\nhost = \"localhost\"\npath = \"/ecp\"\nupstream = \"exchange\"\naccess = \"mfa\"\n"
        );
        let errors = errors(&text);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0].starts_with("routes[1].access (line 24): with the Entra v2.0 issuer"),
            "{errors:#?}"
        );
    }

    #[test]
    fn route_policy_keys_are_read_on_an_mfa_route() {
        let group = "5E6F7A8B-9C0D-4E1F-A2B3-C4D5E6F7A8B9";
        let config = load(&with_route_policy(&format!(
            "unauthenticated_status = 440\nmax_auth_age = \"1h\"\nacrs_any_of = [\"c2\"]\ngroups_any_of = [\"{group}\"]"
        )))
        .unwrap();
        let route = &config.routes[0];
        assert_eq!(route.unauthenticated_status, 440);
        assert_eq!(route.max_auth_age, Some(Duration::from_secs(3600)));
        assert_eq!(route.acrs_any_of, ["c2"]);
        assert_eq!(route.groups_any_of, [Guid::parse(group).unwrap()]);
        assert_eq!(
            route.groups_any_of[0].to_string(),
            group.to_ascii_lowercase()
        );
    }

    #[test]
    fn background_requests_are_read_and_each_bad_entry_is_named() {
        let config = load(&with_route_policy(
            "background_requests = [\"/owa/custom.ashx?poll=1\", \"/owa/timer.ashx\"]",
        ))
        .unwrap_or_else(|e| panic!("{e:#?}"));
        let route = &config.routes[0];
        assert_eq!(route.background_requests.len(), 2);
        assert!(route.background_requests[0].matches("/owa/custom.ashx", Some("poll=1")));
        assert!(!route.background_requests[0].matches("/owa/custom.ashx", None));
        let errors = errors(&with_route_policy(
            "background_requests = [\"owa/x\", \"/owa/x?flag\", \"/ecp/poll\"]",
        ));
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(
            errors[0].starts_with(
                "routes[0].background_requests[0] (line 12): \"owa/x\" does not start with a path"
            ),
            "{errors:#?}"
        );
        assert!(
            errors[1].starts_with("routes[0].background_requests[1] (line 12): the query of"),
            "{errors:#?}"
        );
        assert!(
            errors[2].contains("lies outside this route's path \"/owa\""),
            "{errors:#?}"
        );
    }

    #[test]
    fn unauthenticated_status_other_than_401_or_440_is_refused() {
        for status in ["302", "403", "0", "-401"] {
            refused(
                &with_route_policy(&format!("unauthenticated_status = {status}")),
                &[
                    "routes[0].unauthenticated_status (line 12)",
                    "is not 401 or 440",
                ],
            );
        }
    }

    #[test]
    fn route_policy_keys_on_a_public_or_deny_route_are_refused() {
        for access in ["public", "deny"] {
            let text = format!(
                "{}unauthenticated_status = 440\nmax_auth_age = \"1h\"\nacrs_any_of = [\"c1\"]\ngroups_any_of = []\n",
                route_with("localhost", "/owa", "exchange", access)
            );
            let errors = errors(&text);
            let expected: Vec<String> = [
                ("unauthenticated_status", 12),
                ("max_auth_age", 13),
                ("acrs_any_of", 14),
                ("groups_any_of", 15),
            ]
            .iter()
            .map(|(key, line)| {
                format!("routes[0].{key} (line {line}): only applies to access = \"mfa\"; this route has access = \"{access}\"")
            })
            .collect();
            assert_eq!(errors, expected);
        }
    }

    #[test]
    fn route_max_auth_age_longer_than_the_mfa_one_is_only_a_warning() {
        let text = with_route_policy("max_auth_age = \"24h\"");
        assert_eq!(
            load(&text).unwrap().routes[0].max_auth_age,
            Some(Duration::from_secs(24 * 3600))
        );
        assert_eq!(
            warnings(&text),
            ["routes[0].max_auth_age (line 12): 1day is longer than [mfa].max_auth_age (12h), which applies to every route, so it changes nothing; a route's max_auth_age can only be stricter"]
        );
        assert!(warnings(&with_route_policy("max_auth_age = \"12h\"")).is_empty());
        refused(
            &with_route_policy("max_auth_age = \"0s\""),
            &["routes[0].max_auth_age (line 12)", "must be greater than 0"],
        );
    }

    #[test]
    fn group_that_is_not_an_object_id_is_refused() {
        refused(
            &with_route_policy("groups_any_of = [\"Exchange Admins\"]"),
            &[
                "routes[0].groups_any_of[0] (line 12)",
                "\"Exchange Admins\" is not a group object id",
                "tokens carry group ids, not names",
            ],
        );
    }
}
