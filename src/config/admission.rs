//! Route keys that decide who may reach a route before and beside its access rule:
//! `allow_from` (source networks) and `bind_forms_logon` (Exchange's forms logon only for the
//! signed-in user).

use std::net::IpAddr;

use ipnet::IpNet;

use super::raw::RawRoute;
use super::routes::Access;
use super::sso::Sso;
use super::validate::Checker;

impl Checker {
    /// `allow_from`: `None` when absent (every address); an empty list is refused, since it
    /// would close the route while looking like a rule.
    pub(super) fn route_allow_from(&mut self, path: &str, route: &RawRoute) -> Option<Vec<IpNet>> {
        let list = route.allow_from.as_ref()?;
        if list.get_ref().is_empty() {
            self.error(
                format!("{path}.allow_from"),
                list,
                "must list at least one network, such as \"10.0.0.0/8\"; leave allow_from out to answer every address, or use access = \"deny\" to close the route",
            );
            return None;
        }
        let mut networks = Vec::new();
        for (i, entry) in list.get_ref().iter().enumerate() {
            let text = entry.get_ref().trim();
            match parse_network(text) {
                Some(net) => {
                    if !networks.contains(&net) {
                        networks.push(net);
                    }
                }
                None => self.error(
                    format!("{path}.allow_from[{i}]"),
                    entry,
                    format!(
                        "{:?} is neither an IP network such as \"10.0.0.0/8\" or \"2001:db8::/32\" nor an IP address such as \"192.0.2.7\"",
                        entry.get_ref()
                    ),
                ),
            }
        }
        Some(networks)
    }

    /// `bind_forms_logon`: on by default for `access = "mfa"` routes without single sign-on,
    /// where Exchange's own logon form follows the gateway's sign-in. Turning it off is
    /// allowed, with a warning; the key means nothing on other routes and is refused there.
    pub(super) fn route_bind_forms_logon(
        &mut self,
        path: &str,
        route: &RawRoute,
        access: Option<Access>,
        sso: Sso,
    ) -> bool {
        let key = format!("{path}.bind_forms_logon");
        let default = access == Some(Access::Mfa) && sso == Sso::None;
        let Some(value) = &route.bind_forms_logon else {
            return default;
        };
        match access {
            Some(access @ (Access::Public | Access::Deny)) => {
                self.error(
                    key,
                    value,
                    format!(
                        "only applies to access = \"mfa\" (it binds Exchange's logon to the signed-in user); this route has access = {:?}",
                        access.as_str()
                    ),
                );
                false
            }
            _ if !*value.get_ref() && sso == Sso::None => {
                self.warning(
                    key,
                    value,
                    "Exchange's forms logon (auth.owa) is forwarded whatever user name it carries: with Exchange on forms authentication, anyone who passes MFA here can open any mailbox whose password they know",
                );
                false
            }
            _ => *value.get_ref(),
        }
    }
}

/// A network (`10.0.0.0/8`, host bits ignored) or a single address (`192.0.2.7`).
pub(super) fn parse_network(text: &str) -> Option<IpNet> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Some(net.trunc());
    }
    text.parse::<IpAddr>().ok().map(IpNet::from)
}

#[cfg(test)]
mod tests {
    use ipnet::IpNet;

    use crate::config::test_support::*;

    fn public_route(extra: &str) -> String {
        format!(
            "{}{extra}\n",
            route_with(
                "localhost",
                "/ews/exchange.asmx/wssecurity",
                "exchange",
                "public"
            )
        )
    }

    #[test]
    fn allow_from_reads_networks_and_single_addresses() {
        let config = load(&public_route(
            "allow_from = [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\", \"10.1.2.3/8\"]",
        ))
        .unwrap();
        let nets: Vec<IpNet> = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(config.routes[0].allow_from, Some(nets));
    }

    #[test]
    fn route_without_allow_from_answers_every_address() {
        let config = load(&public_route("")).unwrap();
        assert_eq!(config.routes[0].allow_from, None);
    }

    #[test]
    fn empty_allow_from_is_refused() {
        refused(
            &public_route("allow_from = []"),
            &[
                "routes[0].allow_from (line 12)",
                "must list at least one network",
            ],
        );
    }

    #[test]
    fn allow_from_entry_that_is_not_a_network_is_refused_with_its_index() {
        let errors = errors(&public_route(
            "allow_from = [\"10.0.0.0/8\", \"10.0.0.0/33\", \"mail.contoso.com\"]",
        ));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with(
                "routes[0].allow_from[1] (line 12): \"10.0.0.0/33\" is neither an IP network"
            ),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("routes[0].allow_from[2] (line 12): \"mail.contoso.com\""),
            "{errors:?}"
        );
    }

    #[test]
    fn forms_logon_is_bound_by_default_on_mfa_routes_without_sso() {
        let config = load(&signed_in("", OIDC, &format!("[session]\n{SESSION}"))).unwrap();
        assert!(config.routes[0].bind_forms_logon);
        let config = load(&public_route("")).unwrap();
        assert!(!config.routes[0].bind_forms_logon);
    }

    #[test]
    fn turning_the_forms_logon_binding_off_is_a_warning() {
        let text = signed_in(
            "bind_forms_logon = false",
            OIDC,
            &format!("[session]\n{SESSION}"),
        );
        assert!(!load(&text).unwrap().routes[0].bind_forms_logon);
        let found = warnings(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("routes[0].bind_forms_logon (line 12): Exchange's forms logon (auth.owa) is forwarded whatever user name it carries"),
            "{found:?}"
        );
        let on = signed_in(
            "bind_forms_logon = true",
            OIDC,
            &format!("[session]\n{SESSION}"),
        );
        assert!(warnings(&on).is_empty());
    }

    #[test]
    fn forms_logon_binding_on_a_public_route_is_refused() {
        refused(
            &public_route("bind_forms_logon = true"),
            &[
                "routes[0].bind_forms_logon (line 12)",
                "only applies to access = \"mfa\"",
            ],
        );
    }
}
