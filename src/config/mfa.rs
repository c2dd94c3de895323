//! `[mfa]`: what in an ID token counts as multifactor authentication.

use std::time::Duration;

use toml::Spanned;

use super::defaults::{DEFAULT_AMR_ANY_OF, DEFAULT_MAX_AUTH_AGE};
use super::raw::{RawMfa, Text};
use super::validate::Checker;

/// `[mfa]`: the evidence an ID token must carry, for every `access = "mfa"` route. The defaults
/// apply when the section is absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaConfig {
    /// `amr_any_of`: `amr` must contain one of these (default `["mfa", "ngcmfa"]`) …
    pub amr_any_of: Vec<String>,
    /// `acrs_any_of`: … or `acrs` one of these Conditional Access authentication-context ids
    /// (default none).
    pub acrs_any_of: Vec<String>,
    /// `max_auth_age`: sign-ins older than this must sign in again (default 12 hours).
    pub max_auth_age: Duration,
}

impl Default for MfaConfig {
    fn default() -> Self {
        MfaConfig {
            amr_any_of: DEFAULT_AMR_ANY_OF.map(str::to_owned).to_vec(),
            acrs_any_of: Vec::new(),
            max_auth_age: DEFAULT_MAX_AUTH_AGE,
        }
    }
}

/// `amr` values that name a single factor: accepting one of them as MFA would let every
/// password sign-in through.
const SINGLE_FACTOR_AMR: [&str; 2] = ["pwd", "wia"];

impl Checker {
    pub(super) fn mfa(&mut self, section: Option<&Spanned<RawMfa>>) -> MfaConfig {
        let Some(section) = section else {
            return MfaConfig::default();
        };
        let mfa = section.get_ref();
        let amr_any_of = match &mfa.amr_any_of {
            None => DEFAULT_AMR_ANY_OF.map(str::to_owned).to_vec(),
            Some(list) => {
                let mut out = Vec::new();
                for (i, amr) in list.get_ref().iter().enumerate() {
                    let text = amr.get_ref().trim();
                    let path = format!("mfa.amr_any_of[{i}]");
                    if text.is_empty() {
                        self.error(path, amr, "must be an amr value such as \"mfa\", not empty");
                    } else if SINGLE_FACTOR_AMR.contains(&text) {
                        self.error(
                            path,
                            amr,
                            format!("{text:?} names a single factor, so every sign-in with it alone would count as multifactor authentication; Entra adds \"mfa\" to amr when a second factor was used"),
                        );
                    } else {
                        out.push(text.to_owned());
                    }
                }
                out
            }
        };
        let acrs_any_of = match &mfa.acrs_any_of {
            None => Vec::new(),
            Some(list) => self.auth_contexts("mfa.acrs_any_of", list),
        };
        let amr_empty = mfa
            .amr_any_of
            .as_ref()
            .is_some_and(|l| l.get_ref().is_empty());
        let acrs_empty = mfa
            .acrs_any_of
            .as_ref()
            .is_none_or(|l| l.get_ref().is_empty());
        if amr_empty && acrs_empty {
            self.error(
                "mfa",
                section,
                "amr_any_of and acrs_any_of are both empty, so nothing would count as multifactor authentication; keep the default amr_any_of = [\"mfa\", \"ngcmfa\"] or name an authentication context in acrs_any_of",
            );
        }
        let max_auth_age = self.duration(
            "mfa.max_auth_age",
            mfa.max_auth_age.as_ref(),
            DEFAULT_MAX_AUTH_AGE,
            false,
        );
        MfaConfig {
            amr_any_of,
            acrs_any_of,
            max_auth_age,
        }
    }

    /// Conditional Access authentication-context ids, `c1` … `c99`.
    pub(super) fn auth_contexts(&mut self, path: &str, list: &Spanned<Vec<Text>>) -> Vec<String> {
        let mut out = Vec::new();
        for (i, id) in list.get_ref().iter().enumerate() {
            let text = id.get_ref();
            if is_auth_context(text) {
                if !out.contains(text) {
                    out.push(text.clone());
                }
            } else {
                self.error(
                    format!("{path}[{i}]"),
                    id,
                    format!("{text:?} is not an authentication context id: Entra authentication contexts are c1 to c99 (Entra admin center → Conditional Access → Authentication contexts shows each one's ID)"),
                );
            }
        }
        out
    }
}

/// `c1` … `c99`, as Entra writes authentication-context ids in the `acrs` claim (no leading 0).
fn is_auth_context(id: &str) -> bool {
    id.strip_prefix('c').is_some_and(|n| {
        (1..=2).contains(&n.len()) && !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::test_support::*;

    #[test]
    fn mfa_settings_are_read() {
        let config = load(&with_mfa(
            "amr_any_of = [\"mfa\"]\nacrs_any_of = [\"c1\", \"c99\"]\nmax_auth_age = \"8h\"",
        ))
        .unwrap();
        assert_eq!(config.mfa.amr_any_of, ["mfa"]);
        assert_eq!(config.mfa.acrs_any_of, ["c1", "c99"]);
        assert_eq!(config.mfa.max_auth_age, Duration::from_secs(8 * 3600));
        let config = load(&with_mfa("amr_any_of = []\nacrs_any_of = [\"c3\"]")).unwrap();
        assert!(config.mfa.amr_any_of.is_empty());
    }

    #[test]
    fn mfa_with_both_lists_empty_is_refused_because_nothing_would_count() {
        for body in ["amr_any_of = []", "amr_any_of = []\nacrs_any_of = []"] {
            refused(
                &with_mfa(body),
                &[
                    "mfa (line 21)",
                    "both empty",
                    "nothing would count as multifactor authentication",
                ],
            );
        }
    }

    #[test]
    fn authentication_context_that_is_not_c1_to_c99_is_refused() {
        for id in ["c0", "c100", "C1", "c01", "ctx1", "1", ""] {
            refused(
                &with_mfa(&format!("acrs_any_of = [\"c1\", {id:?}]")),
                &[
                    "mfa.acrs_any_of[1] (line 22)",
                    "is not an authentication context id",
                    "c1 to c99",
                ],
            );
            refused(
                &with_route_policy(&format!("acrs_any_of = [{id:?}]")),
                &["routes[0].acrs_any_of[0] (line 12)", "c1 to c99"],
            );
        }
    }

    #[test]
    fn single_factor_amr_is_refused_because_it_proves_no_second_factor() {
        for amr in ["pwd", "wia"] {
            refused(
                &with_mfa(&format!("amr_any_of = [\"mfa\", {amr:?}]")),
                &["mfa.amr_any_of[1] (line 22)", "names a single factor"],
            );
        }
        refused(
            &with_mfa("amr_any_of = [\"\"]"),
            &["mfa.amr_any_of[0]", "not empty"],
        );
    }
}
