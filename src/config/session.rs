//! `[session]`: the sealed cookie that remembers a sign-in.

use std::time::Duration;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::{alphabet, Engine as _};
use toml::Spanned;

use super::defaults::{
    DEFAULT_COOKIE_NAME, DEFAULT_SESSION_IDLE_TIMEOUT, DEFAULT_SESSION_LIFETIME,
};
use super::raw::RawSession;
use super::secret::Secrets;
use super::validate::Checker;

/// `[session]`: the cookie a sign-in is sealed into (AEAD, with the cookie name as associated
/// data). Present whenever `[oidc]` is.
#[derive(Clone)]
pub struct SessionConfig {
    /// `cookie_name`, an RFC 6265 token; default `__Host-mfagw`.
    pub cookie_name: String,
    /// `keys`, decoded, each at least 32 bytes; the first seals, all open.
    pub keys: Vec<Vec<u8>>,
    /// `lifetime`: a session ends this long after sign-in, however active (default 10 hours).
    pub lifetime: Duration,
    /// `idle_timeout`: … or after this long without a request; at most `lifetime` (default one
    /// hour).
    pub idle_timeout: Duration,
}

impl std::fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionConfig")
            .field("cookie_name", &self.cookie_name)
            .field("keys", &format_args!("<{} redacted>", self.keys.len()))
            .field("lifetime", &self.lifetime)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

/// AES-256 needs 256 bits of key material; fewer random bytes would weaken every session.
const MIN_SESSION_KEY_BYTES: usize = 32;

const SESSION_KEY_HINT: &str =
    "make one with `openssl rand -base64 32 > /etc/mfa-gateway/session.key` and `chmod 600` it";

/// Base64 as `openssl rand -base64` writes it, or URL-safe; padding optional.
const ANY_PADDING: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_encode_padding(false)
    .with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, ANY_PADDING);
const URL_SAFE_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, ANY_PADDING);

impl Checker {
    pub(super) fn session(
        &mut self,
        section: &Spanned<RawSession>,
        secrets: &dyn Secrets,
    ) -> SessionConfig {
        let session = section.get_ref();
        let cookie_name = match &session.cookie_name {
            None => DEFAULT_COOKIE_NAME.to_owned(),
            Some(name) => {
                if !is_cookie_name(name.get_ref()) {
                    self.error(
                        "session.cookie_name",
                        name,
                        format!("{:?} is not a valid cookie name: use letters, digits, \"-\", \"_\" and \".\", without spaces, \"=\", \";\" or quotes, such as \"__Host-mfagw\"", name.get_ref()),
                    );
                }
                name.get_ref().clone()
            }
        };

        if session.keys.get_ref().is_empty() {
            self.error(
                "session.keys",
                &session.keys,
                format!("at least one key is required; {SESSION_KEY_HINT}"),
            );
        }
        let mut keys = Vec::new();
        for (i, key) in session.keys.get_ref().iter().enumerate() {
            let path = format!("session.keys[{i}]");
            let Some(text) = self.secret(&path, key, secrets) else {
                continue;
            };
            let origin = key.get_ref().describe();
            match decode_session_key(&text) {
                Some(bytes) if bytes.len() >= MIN_SESSION_KEY_BYTES => keys.push(bytes),
                Some(bytes) => self.error(
                    path,
                    key,
                    format!(
                        "{origin} holds {} bytes once decoded; a session key needs at least {MIN_SESSION_KEY_BYTES} random bytes: {SESSION_KEY_HINT}",
                        bytes.len()
                    ),
                ),
                None => self.error(
                    path,
                    key,
                    format!("{origin} is not base64 (standard or URL-safe alphabet); {SESSION_KEY_HINT}"),
                ),
            }
        }

        // `None` when a value is written but invalid: then no comparison is made, and the
        // error already recorded says what to fix.
        let lifetime = session
            .lifetime
            .as_ref()
            .map_or(Some(DEFAULT_SESSION_LIFETIME), |v| {
                self.duration_value("session.lifetime", v, false)
            });
        let idle_timeout = session
            .idle_timeout
            .as_ref()
            .map_or(Some(DEFAULT_SESSION_IDLE_TIMEOUT), |v| {
                self.duration_value("session.idle_timeout", v, false)
            });
        if let (Some(lifetime), Some(idle_timeout)) = (lifetime, idle_timeout) {
            if idle_timeout > lifetime {
                let message = format!(
                    "idle_timeout ({}) must not exceed lifetime ({}): a session ends at its lifetime however active it is",
                    humantime::format_duration(idle_timeout),
                    humantime::format_duration(lifetime)
                );
                match (&session.idle_timeout, &session.lifetime) {
                    (Some(at), _) => self.error("session.idle_timeout", at, message),
                    (None, Some(at)) => self.error("session.lifetime", at, message),
                    (None, None) => {}
                }
            }
        }

        SessionConfig {
            cookie_name,
            keys,
            lifetime: lifetime.unwrap_or(DEFAULT_SESSION_LIFETIME),
            idle_timeout: idle_timeout.unwrap_or(DEFAULT_SESSION_IDLE_TIMEOUT),
        }
    }
}

/// An RFC 6265 cookie name: an HTTP token.
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Session key material: base64 in the standard or URL-safe alphabet, padding optional, line
/// breaks ignored (`openssl rand -base64 64` wraps its output).
fn decode_session_key(text: &str) -> Option<Vec<u8>> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD_ANY_PADDING
        .decode(&compact)
        .or_else(|_| URL_SAFE_ANY_PADDING.decode(&compact))
        .ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use base64::Engine as _;

    use crate::config::test_support::*;
    use crate::config::{Config, MapSecrets};

    #[test]
    fn session_settings_are_read() {
        let text = with_session(
            "cookie_name = \"mfagw\"\nkeys = [{ env = \"NEW_KEY\" }, { file = \"/etc/mfa-gateway/session.key\" }]\nlifetime = \"8h\"\nidle_timeout = \"8h\"",
        );
        let secrets = secrets().with_env(
            "NEW_KEY",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIj",
        );
        let session = Config::from_toml(&text, &secrets).unwrap().session.unwrap();
        assert_eq!(session.cookie_name, "mfagw");
        assert_eq!(session.keys.len(), 2);
        assert_eq!(session.keys[0], (0u8..36).collect::<Vec<u8>>());
        assert_eq!(session.keys[1].len(), 32);
        assert_eq!(session.lifetime, Duration::from_secs(8 * 3600));
        assert_eq!(session.idle_timeout, Duration::from_secs(8 * 3600));
    }

    #[test]
    fn session_key_is_read_in_standard_or_url_safe_base64_with_or_without_padding() {
        // 33 bytes chosen so that the two alphabets differ (+/ against -_).
        let bytes: Vec<u8> = (0u8..33)
            .map(|i| i.wrapping_mul(37).wrapping_add(0xf8))
            .collect();
        let standard = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert!(
            standard.contains('+') || standard.contains('/'),
            "{standard}"
        );
        let url_safe = base64::engine::general_purpose::URL_SAFE.encode(&bytes);
        let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&bytes);
        // `openssl rand -base64 48` and longer wrap their output at 64 characters.
        let wrapped = format!("{}\n{}\n", &standard[..20], &standard[20..]);
        for encoded in [&standard, &url_safe, &unpadded, &wrapped] {
            let secrets = MapSecrets::new()
                .with_file("/etc/mfa-gateway/client-secret", "s")
                .with_file("/etc/mfa-gateway/session.key", encoded.as_str());
            let session = Config::from_toml(&with_session(SESSION), &secrets)
                .unwrap_or_else(|e| panic!("{encoded:?}: {e}"))
                .session
                .unwrap();
            assert_eq!(session.keys, std::slice::from_ref(&bytes), "{encoded:?}");
        }
    }

    #[test]
    fn session_key_shorter_than_32_bytes_is_refused_with_the_openssl_hint() {
        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        refused(
            &with_session(&format!("keys = [{{ value = \"{short}\" }}]")),
            &[
                "session.keys[0] (line 19): inline secret value holds 16 bytes once decoded",
                "at least 32 random bytes",
                "openssl rand -base64 32",
            ],
        );
    }

    #[test]
    fn session_key_that_is_not_base64_is_refused_without_echoing_it() {
        let secrets = secrets().with_env("SESSION_KEY", "correct horse battery staple!!");
        let text = with_session("keys = [{ env = \"SESSION_KEY\" }]");
        let errors: Vec<String> = Config::from_toml(&text, &secrets)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0].starts_with(
                "session.keys[0] (line 19): environment variable SESSION_KEY is not base64"
            ),
            "{errors:#?}"
        );
        assert!(errors[0].contains("openssl rand -base64 32"));
        assert!(!errors[0].contains("horse"), "{errors:#?}");
    }

    #[test]
    fn session_without_keys_is_refused() {
        refused(
            &with_session("keys = []"),
            &[
                "session.keys (line 19): at least one key is required",
                "openssl rand",
            ],
        );
        refused(
            &with_session("lifetime = \"10h\""),
            &["session.keys (line 18): is required but missing"],
        );
    }

    #[test]
    fn missing_session_key_file_is_reported_by_path() {
        refused(
            &with_session("keys = [{ file = \"/etc/mfa-gateway/old.key\" }]"),
            &["session.keys[0] (line 19): cannot read secret file /etc/mfa-gateway/old.key"],
        );
    }

    #[test]
    fn cookie_name_that_is_not_a_token_is_refused() {
        for name in ["", "mfa gw", "mfa=gw", "mfa;gw", "\"mfagw\"", "mfagw\u{e9}"] {
            refused(
                &with_session(&format!("{SESSION}cookie_name = {name:?}")),
                &[
                    "session.cookie_name (line 20)",
                    "is not a valid cookie name",
                ],
            );
        }
        for name in ["__Host-mfagw", "__Secure-mfagw", "mfagw.session"] {
            let text = with_session(&format!("{SESSION}cookie_name = {name:?}"));
            assert_eq!(load(&text).unwrap().session.unwrap().cookie_name, name);
        }
    }

    #[test]
    fn idle_timeout_longer_than_lifetime_is_refused() {
        refused(
            &with_session(&format!(
                "{SESSION}lifetime = \"2h\"\nidle_timeout = \"3h\""
            )),
            &[
                "session.idle_timeout (line 21)",
                "idle_timeout (3h) must not exceed lifetime (2h)",
            ],
        );
        refused(
            &with_session(&format!("{SESSION}lifetime = \"30m\"")),
            &[
                "session.lifetime (line 20)",
                "idle_timeout (1h) must not exceed lifetime (30m)",
            ],
        );
        refused(
            &with_session(&format!("{SESSION}lifetime = \"0s\"")),
            &["session.lifetime (line 20)", "must be greater than 0"],
        );
    }
}
