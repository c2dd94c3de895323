//! The key ring that seals sessions and pending logins into cookie values.
//!
//! A sealed value is `base64url(version ‖ key id ‖ nonce ‖ AES-256-GCM(postcard(value)) ‖ tag)`
//! without padding. Version and key id travel in the clear so that opening goes straight to the
//! one key that sealed (an unknown id is refused without any decryption), and both are also in
//! the associated data, together with what the value is (session or pending login) and the
//! cookie's name: a value copied into another cookie, or a pending login presented as a
//! session, fails authentication like any tampered byte.
//!
//! The nonce is 96 random bits per seal. Random nonces stay safe for about 2³² seals per key;
//! re-sealing at most once a minute per browser keeps a ring far below that between rotations.

use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine as _};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hkdf};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::cookie::is_valid_cookie_name;
use super::login::LoginTransaction;
use super::model::{Session, SessionId};

/// Bumped whenever the sealed layout or the encoded types change: older cookies then open as
/// nothing (signed out) instead of being misread — unless [`SealedValue::decode`] knows how
/// to read the older version. Version 2 appended `Session::account_name`.
pub const FORMAT_VERSION: u8 = 2;

/// The oldest version still opened.
const OLDEST_READ_VERSION: u8 = 1;

/// A value sealed into a cookie, read from the plaintext of the version it was sealed in.
trait SealedValue: Sized {
    fn decode(version: u8, plain: &[u8]) -> Option<Self>;
}

/// The whole plaintext must be one value: trailing bytes mean another layout.
fn decode_exactly<T: DeserializeOwned>(plain: &[u8]) -> Option<T> {
    let (value, rest) = postcard::take_from_bytes::<T>(plain).ok()?;
    rest.is_empty().then_some(value)
}

impl SealedValue for Session {
    fn decode(version: u8, plain: &[u8]) -> Option<Session> {
        match version {
            FORMAT_VERSION => decode_exactly(plain),
            // Version 1 is version 2 without the trailing `account_name`: postcard writes a
            // `None` as the single byte 0, so appending it reads the old cookie exactly, and
            // browsers stay signed in across the upgrade. (The version byte is authenticated:
            // nobody can make a version 2 cookie be read this way.)
            1 => {
                let mut upgraded = Vec::with_capacity(plain.len() + 1);
                upgraded.extend_from_slice(plain);
                upgraded.push(0);
                decode_exactly(&upgraded)
            }
            _ => None,
        }
    }
}

impl SealedValue for LoginTransaction {
    fn decode(version: u8, plain: &[u8]) -> Option<LoginTransaction> {
        // Unchanged since version 1.
        matches!(version, 1 | FORMAT_VERSION)
            .then(|| decode_exactly(plain))
            .flatten()
    }
}

impl SealedValue for SessionId {
    fn decode(version: u8, plain: &[u8]) -> Option<SessionId> {
        // Exchange bindings were first sealed in version 2.
        (version == FORMAT_VERSION)
            .then(|| decode_exactly(plain))
            .flatten()
    }
}

/// Fewer random bytes than this is refused: the AES-256 key must have 256 bits of entropy.
pub const MIN_KEY_BYTES: usize = 32;

const KEY_ID_LEN: usize = 4;
const PREFIX_LEN: usize = 1 + KEY_ID_LEN;
const HEADER_LEN: usize = PREFIX_LEN + NONCE_LEN;
const TAG_LEN: usize = 16;
/// Browsers keep at most 4096 bytes per cookie; anything longer is not ours, and refusing it
/// before decoding bounds the work a hostile request can cause.
const MAX_SEALED_LEN: usize = 4096;

/// HKDF salt: binds derived keys to this use, so the same secret file reused elsewhere by
/// mistake does not yield the same AES key.
const HKDF_SALT: &[u8] = b"mfa-gateway session key ring";

/// What a sealed value is; part of the associated data.
#[derive(Clone, Copy)]
enum Purpose {
    Session,
    Login,
    ExchangeBinding,
}

impl Purpose {
    fn tag(self) -> u8 {
        match self {
            Purpose::Session => b'S',
            Purpose::Login => b'L',
            Purpose::ExchangeBinding => b'X',
        }
    }
}

/// Sealing failed: the system's random number generator (or the serialiser) refused. Not
/// something a browser can cause; the request fails as an internal error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealError;

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("could not seal the cookie: the system random number generator failed")
    }
}

impl std::error::Error for SealError {}

/// Why a session key or the key ring cannot be built from the configuration. The messages
/// name what is wrong with a key, never its bytes: they end up in logs and terminals.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("is not base64; generate a key with `openssl rand -base64 32`")]
    NotBase64,
    #[error(
        "holds {bytes} bytes; a session key needs at least {min} random bytes \
         (`openssl rand -base64 32`)",
        min = MIN_KEY_BYTES
    )]
    TooShort { bytes: usize },
    /// HKDF refused the requested output length (a constant): not caused by the key's bytes.
    #[error("could not derive the session key")]
    Derivation,
    #[error(
        "`{}` is not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~ only)",
        .0.escape_debug()
    )]
    InvalidCookieName(String),
    #[error("at least one session key is needed")]
    NoKeys,
}

/// One key of the ring, derived from the configured secret.
///
/// The secret (at least [`MIN_KEY_BYTES`] random bytes) is not used directly: the AES-256-GCM
/// key and the key id are both derived from *all* of its bytes with HKDF-SHA256. A longer
/// secret therefore never loses entropy to truncation (`openssl rand -hex 32`, decoded as
/// base64, still counts fully), and the id in the clear reveals nothing about the AES key.
#[derive(Clone)]
pub struct SessionKey {
    id: [u8; KEY_ID_LEN],
    key: LessSafeKey,
}

struct KeyIdLen;

impl hkdf::KeyType for KeyIdLen {
    fn len(&self) -> usize {
        KEY_ID_LEN
    }
}

impl SessionKey {
    /// Reads a key as the configuration gives it: base64 (standard or URL-safe alphabet,
    /// padded or not, surrounding whitespace ignored) of at least 32 random bytes.
    pub fn from_base64(text: &str) -> Result<SessionKey, KeyError> {
        let text = text.trim();
        let lenient = GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true);
        let bytes = GeneralPurpose::new(&alphabet::STANDARD, lenient)
            .decode(text)
            .or_else(|_| GeneralPurpose::new(&alphabet::URL_SAFE, lenient).decode(text))
            .map_err(|_| KeyError::NotBase64)?;
        SessionKey::from_bytes(&bytes)
    }

    /// Derives a key from raw secret bytes, refusing fewer than [`MIN_KEY_BYTES`].
    pub fn from_bytes(secret: &[u8]) -> Result<SessionKey, KeyError> {
        if secret.len() < MIN_KEY_BYTES {
            return Err(KeyError::TooShort {
                bytes: secret.len(),
            });
        }
        let failed = |_| KeyError::Derivation;
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(secret);
        let key = UnboundKey::from(
            prk.expand(&[b"aes-256-gcm"], &AES_256_GCM)
                .map_err(failed)?,
        );
        let mut id = [0u8; KEY_ID_LEN];
        prk.expand(&[b"key id"], KeyIdLen)
            .map_err(failed)?
            .fill(&mut id)
            .map_err(failed)?;
        Ok(SessionKey {
            id,
            key: LessSafeKey::new(key),
        })
    }

    /// The key id as hex, for logs and readiness output; not secret.
    pub fn id(&self) -> String {
        hex(&self.id)
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKey({})", self.id())
    }
}

/// The key ring: the first key seals, every key opens, so keys rotate without signing anyone
/// out (add the new key first, keep the old one listed for a session lifetime, then drop it).
/// Any gateway holding the same keys opens any other's cookies.
#[derive(Clone)]
pub struct SessionSeal {
    cookie_name: String,
    login_prefix: String,
    /// `<cookie_name>-exchange`: see [`SessionSeal::seal_binding`].
    binding_cookie_name: String,
    keys: Vec<SessionKey>,
    rng: SystemRandom,
}

impl fmt::Debug for SessionSeal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionSeal")
            .field("cookie_name", &self.cookie_name)
            .field("keys", &self.keys)
            .finish()
    }
}

impl SessionSeal {
    /// A ring sealing with `keys[0]`, for the session cookie `cookie_name` (e.g.
    /// `__Host-mfagw`). Pending logins use cookies named after it (see
    /// [`SessionSeal::login_cookie_name`]).
    pub fn new(cookie_name: &str, keys: Vec<SessionKey>) -> Result<SessionSeal, KeyError> {
        if !is_valid_cookie_name(cookie_name) {
            return Err(KeyError::InvalidCookieName(cookie_name.to_owned()));
        }
        if keys.is_empty() {
            return Err(KeyError::NoKeys);
        }
        Ok(SessionSeal {
            cookie_name: cookie_name.to_owned(),
            login_prefix: format!("{cookie_name}-login-"),
            binding_cookie_name: format!("{cookie_name}-exchange"),
            keys,
            rng: SystemRandom::new(),
        })
    }

    pub fn cookie_name(&self) -> &str {
        &self.cookie_name
    }

    /// Ids of the keys in ring order (the first one seals).
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.iter().map(SessionKey::id).collect()
    }

    /// A fresh 128-bit session id from the system's random number generator.
    pub fn new_session_id(&self) -> Result<SessionId, SealError> {
        let mut id = [0u8; 16];
        self.rng.fill(&mut id).map_err(|_| SealError)?;
        Ok(SessionId(id))
    }

    /// The session cookie's value.
    pub fn seal(&self, session: &Session) -> Result<String, SealError> {
        self.seal_value(Purpose::Session, &self.cookie_name, session)
    }

    /// The session in a session cookie's value; `None` for anything this ring did not seal
    /// for this cookie name, in this format: the browser is then simply signed out.
    pub fn open(&self, value: &str) -> Option<Session> {
        self.open_value(Purpose::Session, &self.cookie_name, value)
    }

    /// The cookie holding the pending login for `state`: one cookie per sign-in in progress,
    /// so two tabs signing in at once do not overwrite each other's. Named from a hash of the
    /// state, so any state a browser sends maps to a valid, fixed-length name.
    pub fn login_cookie_name(&self, state: &str) -> String {
        let hash = digest::digest(&digest::SHA256, state.as_bytes());
        let short = hash.as_ref().get(..8).unwrap_or_default();
        format!("{}{}", self.login_prefix, hex(short))
    }

    /// Whether `name` is one of the pending-login cookies.
    pub fn is_login_cookie(&self, name: &str) -> bool {
        name.starts_with(&self.login_prefix)
    }

    /// Whether `name` is a cookie of the gateway (session or pending login): these are never
    /// forwarded to Exchange.
    pub fn is_gateway_cookie(&self, name: &str) -> bool {
        name == self.cookie_name || name == self.binding_cookie_name || self.is_login_cookie(name)
    }

    /// The cookie that names the session under which the browser's Exchange identity cookies
    /// were set (see [`super::exchange`]).
    pub fn binding_cookie_name(&self) -> &str {
        &self.binding_cookie_name
    }

    /// The value of the binding cookie for `session`.
    pub fn seal_binding(&self, session: &SessionId) -> Result<String, SealError> {
        self.seal_value(Purpose::ExchangeBinding, &self.binding_cookie_name, session)
    }

    /// The session a binding cookie's value names; `None` for anything this ring did not seal.
    pub fn open_binding(&self, value: &str) -> Option<SessionId> {
        self.open_value(Purpose::ExchangeBinding, &self.binding_cookie_name, value)
    }

    /// The value of the cookie named [`SessionSeal::login_cookie_name`]`(&login.state)`.
    pub fn seal_login(&self, login: &LoginTransaction) -> Result<String, SealError> {
        let name = self.login_cookie_name(&login.state);
        self.seal_value(Purpose::Login, &name, login)
    }

    /// The pending login for the `state` the callback received, from the value of the cookie
    /// named after that state. `None` when it was not sealed for this very state.
    pub fn open_login(&self, state: &str, value: &str) -> Option<LoginTransaction> {
        let name = self.login_cookie_name(state);
        let login: LoginTransaction = self.open_value(Purpose::Login, &name, value)?;
        (login.state == state).then_some(login)
    }

    /// A pending-login cookie opened by its own name (the name is the associated data), to
    /// learn its age when too many are pending.
    pub fn open_login_cookie(&self, name: &str, value: &str) -> Option<LoginTransaction> {
        if !self.is_login_cookie(name) {
            return None;
        }
        let login: LoginTransaction = self.open_value(Purpose::Login, name, value)?;
        (self.login_cookie_name(&login.state) == name).then_some(login)
    }

    fn seal_value<T: Serialize>(
        &self,
        purpose: Purpose,
        cookie_name: &str,
        value: &T,
    ) -> Result<String, SealError> {
        let plain = postcard::to_allocvec(value).map_err(|_| SealError)?;
        self.seal_bytes(FORMAT_VERSION, purpose, cookie_name, &plain)
    }

    fn seal_bytes(
        &self,
        version: u8,
        purpose: Purpose,
        cookie_name: &str,
        plain: &[u8],
    ) -> Result<String, SealError> {
        let key = self.keys.first().ok_or(SealError)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError)?;

        let mut sealed = Vec::with_capacity(HEADER_LEN + plain.len() + TAG_LEN);
        sealed.push(version);
        sealed.extend_from_slice(&key.id);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(plain);

        let (prefix, body) = sealed.split_at_mut(HEADER_LEN);
        let aad = associated_data(
            prefix.get(..PREFIX_LEN).unwrap_or_default(),
            purpose,
            cookie_name,
        );
        let tag = key
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad[..]),
                body,
            )
            .map_err(|_| SealError)?;
        sealed.extend_from_slice(tag.as_ref());
        Ok(URL_SAFE_NO_PAD.encode(&sealed))
    }

    fn open_value<T: SealedValue>(
        &self,
        purpose: Purpose,
        cookie_name: &str,
        value: &str,
    ) -> Option<T> {
        if value.len() > MAX_SEALED_LEN {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(value).ok()?;
        let (header, ciphertext) = raw.split_at_checked(HEADER_LEN)?;
        if ciphertext.len() < TAG_LEN {
            return None;
        }
        let (prefix, nonce) = header.split_at(PREFIX_LEN);
        let (&version, key_id) = prefix.split_first()?;
        if !(OLDEST_READ_VERSION..=FORMAT_VERSION).contains(&version) {
            return None;
        }
        let aad = associated_data(prefix, purpose, cookie_name);
        // Ids are 32 bits: two listed keys sharing one is unlikely but must still work.
        for key in self.keys.iter().filter(|key| key.id == key_id) {
            let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
            let mut buffer = ciphertext.to_vec();
            if let Ok(plain) = key
                .key
                .open_in_place(nonce, Aad::from(&aad[..]), &mut buffer)
            {
                return T::decode(version, plain);
            }
        }
        None
    }
}

fn associated_data(prefix: &[u8], purpose: Purpose, cookie_name: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(prefix.len() + 1 + cookie_name.len());
    aad.extend_from_slice(prefix);
    aad.push(purpose.tag());
    aad.extend_from_slice(cookie_name.as_bytes());
    aad
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authentic_value_of_another_shape_is_refused() {
        // Only a gateway with the keys can produce this, e.g. one running a future format
        // without bumping the version: it must still mean signed out, not a panic.
        let seal = SessionSeal::new(
            "__Host-mfagw",
            vec![SessionKey::from_bytes(&[1; 32]).unwrap()],
        )
        .unwrap();
        for bytes in [&[][..], &[0xff; 3][..], &[1, 2, 3, 4, 5, 6, 7, 8][..]] {
            let value = seal
                .seal_value(Purpose::Session, "__Host-mfagw", &bytes)
                .unwrap();
            assert_eq!(seal.open(&value), None);
        }
        let login = seal
            .seal_value(
                Purpose::Login,
                &seal.login_cookie_name("s"),
                &("s", "n", "v", "/", 1u64, 9u8),
            )
            .unwrap();
        assert_eq!(seal.open_login("s", &login), None, "trailing bytes");
    }

    fn sample_session(account_name: Option<&str>) -> Session {
        use super::super::model::EntraId;
        let mut session = Session::new(
            SessionId([7; 16]),
            EntraId::parse("4f1c2a7e-9b3d-4e8f-a1c2-3d4e5f6a7b8c"),
            EntraId::parse("72f988bf-86f1-41af-91ab-2d7cd011db47"),
            1_800_000_000,
            1_800_000_000,
            std::time::Duration::from_secs(3600),
        );
        session.upn = Some("alice@contoso.com".into());
        session.account_name = account_name.map(str::to_owned);
        session
    }

    #[test]
    fn a_session_cookie_of_format_version_1_still_opens_without_an_account_name() {
        let seal = SessionSeal::new(
            "__Host-mfagw",
            vec![SessionKey::from_bytes(&[1; 32]).unwrap()],
        )
        .unwrap();
        let session = sample_session(None);
        // Version 1 wrote the same fields without the trailing account name (a `None` is the
        // last byte, 0).
        let mut v1 = postcard::to_allocvec(&session).unwrap();
        assert_eq!(v1.pop(), Some(0));
        let old = seal
            .seal_bytes(1, Purpose::Session, "__Host-mfagw", &v1)
            .unwrap();
        assert_eq!(seal.open(&old), Some(session.clone()));

        // A current cookie keeps the account name; version 1 bytes under version 2 do not open.
        let current = sample_session(Some("alice"));
        assert_eq!(seal.open(&seal.seal(&current).unwrap()), Some(current));
        let mislabelled = seal
            .seal_bytes(FORMAT_VERSION, Purpose::Session, "__Host-mfagw", &v1)
            .unwrap();
        assert_eq!(seal.open(&mislabelled), None);
        let future = seal
            .seal_bytes(FORMAT_VERSION + 1, Purpose::Session, "__Host-mfagw", &v1)
            .unwrap();
        assert_eq!(seal.open(&future), None);
    }
}
