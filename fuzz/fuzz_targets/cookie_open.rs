//! Session and pending-login cookies as a browser (or an attacker) sends them.
//!
//! The input is read twice:
//! - as cookie text: `state\nvalue` (or just `value`), opened as a session cookie, as the
//!   pending login of `state`, as a pending-login cookie named `state`, and inside a `Cookie`
//!   header; nothing may panic, and whatever opens must re-seal to the same session;
//! - as the fields of a session and of a pending login, sealed and opened again: the value
//!   must come back unchanged (when it fits in a cookie), on a ring that rotated in a new key
//!   too, and never on a ring without the sealing key, under the other purpose, or after a
//!   single character changed.

#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use arbitrary::{Result, Unstructured};
use http::header::{HeaderValue, COOKIE};
use http::HeaderMap;
use libfuzzer_sys::fuzz_target;
use mfa_gateway::session::{
    find_cookie, is_valid_cookie_name, EntraId, Guid, LoginTransaction, MfaEvidence, Session,
    SessionId, SessionKey, SessionSeal,
};

const COOKIE_NAME: &str = "__Host-mfagw";
/// What `SessionSeal::open` refuses outright: longer than a browser keeps.
const MAX_SEALED_LEN: usize = 4096;

fn key(fill: u8) -> SessionKey {
    match SessionKey::from_bytes(&[fill; 32]) {
        Ok(key) => key,
        Err(e) => panic!("fixed fuzzing key refused: {e}"),
    }
}

fn ring(keys: Vec<SessionKey>) -> SessionSeal {
    match SessionSeal::new(COOKIE_NAME, keys) {
        Ok(seal) => seal,
        Err(e) => panic!("fixed fuzzing ring refused: {e}"),
    }
}

/// Seals with key 0x11.
static CURRENT: LazyLock<SessionSeal> = LazyLock::new(|| ring(vec![key(0x11)]));
/// After a rotation: a new key seals, the old one still opens.
static ROTATED: LazyLock<SessionSeal> = LazyLock::new(|| ring(vec![key(0x22), key(0x11)]));
/// A gateway that never had key 0x11.
static FOREIGN: LazyLock<SessionSeal> = LazyLock::new(|| ring(vec![key(0x22)]));

fuzz_target!(|data: &[u8]| {
    open_hostile_text(data);
    let _ = round_trip(&mut Unstructured::new(data));
});

fn open_hostile_text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (state, value) = text.split_once('\n').unwrap_or(("", &text));

    for candidate in [&*text, value] {
        if let Some(session) = CURRENT.open(candidate) {
            // Only a value sealed with the key opens (a seed in the corpus is one): it must
            // survive a re-seal unchanged.
            let resealed = CURRENT.seal(&session).expect("sealing works");
            assert_eq!(CURRENT.open(&resealed).as_ref(), Some(&session));
        }
    }
    let _ = ROTATED.open(value);
    if let Some(login) = CURRENT.open_login(state, value) {
        assert_eq!(
            login.state, state,
            "a pending login opened for another state"
        );
    }
    if let Some(login) = CURRENT.open_login_cookie(state, value) {
        assert_eq!(CURRENT.login_cookie_name(&login.state), state);
    }

    let name = CURRENT.login_cookie_name(state);
    assert!(is_valid_cookie_name(&name), "{name:?}");
    assert!(CURRENT.is_login_cookie(&name) && CURRENT.is_gateway_cookie(&name));
    assert!(!CURRENT.is_login_cookie(COOKIE_NAME));

    if let Ok(field) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, field);
        if let Some(found) = find_cookie(&headers, COOKIE_NAME) {
            let _ = CURRENT.open(found);
        }
    }
    let _ = SessionKey::from_base64(&text);
}

fn text(u: &mut Unstructured<'_>) -> Result<String> {
    u.arbitrary()
}

fn entra_id(u: &mut Unstructured<'_>) -> Result<EntraId> {
    Ok(if u.arbitrary()? {
        EntraId::Guid(Guid(u.arbitrary()?))
    } else {
        EntraId::Text(text(u)?)
    })
}

fn session(u: &mut Unstructured<'_>) -> Result<Session> {
    let mut session = Session::new(
        SessionId(u.arbitrary()?),
        entra_id(u)?,
        entra_id(u)?,
        u.arbitrary()?,
        u.arbitrary()?,
        Duration::from_secs(u.arbitrary()?),
    );
    session.sid = u.arbitrary()?;
    session.upn = u.arbitrary()?;
    session.name = u.arbitrary()?;
    session.onprem_sid = u.arbitrary()?;
    let groups: Vec<[u8; 16]> = u.arbitrary()?;
    session.groups = groups.into_iter().map(Guid).collect();
    session.mfa = MfaEvidence {
        amr: u.arbitrary()?,
        acrs: u.arbitrary()?,
    };
    session.last_seen = u.arbitrary()?;
    session.groups_overage = u.arbitrary()?;
    Ok(session)
}

fn login(u: &mut Unstructured<'_>) -> Result<LoginTransaction> {
    Ok(LoginTransaction {
        state: text(u)?,
        nonce: text(u)?,
        pkce_verifier: text(u)?,
        return_path: text(u)?,
        created_at: u.arbitrary()?,
    })
}

/// The value with the character at `at` replaced by another base64url character.
fn tampered(value: &str, at: usize) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = value.as_bytes().to_vec();
    let slot = bytes.get_mut(at % value.len().max(1))?;
    let index = ALPHABET.iter().position(|b| b == slot)?;
    *slot = ALPHABET[(index + 1 + at % 63) % ALPHABET.len()];
    String::from_utf8(bytes).ok()
}

fn round_trip(u: &mut Unstructured<'_>) -> Result<()> {
    let session = session(u)?;
    let value = CURRENT.seal(&session).expect("sealing works");
    let fits = value.len() <= MAX_SEALED_LEN;
    let expected = fits.then_some(&session);
    assert_eq!(CURRENT.open(&value).as_ref(), expected);
    assert_eq!(
        ROTATED.open(&value).as_ref(),
        expected,
        "lost on key rotation"
    );
    assert_eq!(FOREIGN.open(&value), None, "opened without the sealing key");
    assert_eq!(
        CURRENT.open_login("", &value),
        None,
        "a session read as a pending login"
    );
    if let Some(changed) = tampered(&value, u.arbitrary()?) {
        assert_eq!(CURRENT.open(&changed), None, "a tampered cookie opened");
    }
    let resealed = ROTATED.seal(&session).expect("sealing works");
    assert_eq!(ROTATED.open(&resealed).as_ref(), fits.then_some(&session));
    assert_eq!(
        CURRENT.open(&resealed),
        None,
        "opened with a key that was not listed"
    );

    let login = login(u)?;
    let value = CURRENT.seal_login(&login).expect("sealing works");
    let fits = value.len() <= MAX_SEALED_LEN;
    let opened = CURRENT.open_login(&login.state, &value);
    assert_eq!(opened.as_ref(), fits.then_some(&login));
    let name = CURRENT.login_cookie_name(&login.state);
    assert_eq!(
        CURRENT.open_login_cookie(&name, &value).as_ref(),
        fits.then_some(&login)
    );
    assert_eq!(
        CURRENT.open(&value),
        None,
        "a pending login read as a session"
    );
    let other_state = format!("{}x", login.state);
    assert_eq!(CURRENT.open_login(&other_state, &value), None);
    assert_eq!(FOREIGN.open_login(&login.state, &value), None);
    Ok(())
}
