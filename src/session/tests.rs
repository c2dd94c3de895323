//! What a browser, an administrator rotating keys, or an attacker holding a cookie sees.

use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;

use super::*;

const COOKIE: &str = "__Host-mfagw";
const T0: u64 = 1_800_000_000;

fn key(fill: u8) -> SessionKey {
    SessionKey::from_bytes(&[fill; 32]).unwrap()
}

fn ring(keys: Vec<SessionKey>) -> SessionSeal {
    SessionSeal::new(COOKIE, keys).unwrap()
}

/// A sign-in shaped like a real Entra v1.0 one, with long-ish names so the size test is honest.
pub(super) fn session(groups: usize) -> Session {
    let mut session = Session::new(
        SessionId([0xa5; 16]),
        EntraId::parse("4f1c2a7e-9b3d-4e8f-a1c2-3d4e5f6a7b8c"),
        EntraId::parse("72f988bf-86f1-41af-91ab-2d7cd011db47"),
        T0 - 30,
        T0,
        Duration::from_secs(10 * 3600),
    );
    session.sid = Some("001d5c2b-8a34-4f7e-9e0a-5b6c7d8e9f01".into());
    session.upn = Some("margaretha.van.der.berghe-olsen@finance.contoso-bank.com".into());
    session.name = Some("Margaretha van der Berghe-Olsen (Treasury)".into());
    session.onprem_sid = Some("S-1-5-21-3623811015-3361044348-30300820-101324".into());
    session.account_name = Some("mvanderbergheolsen".into());
    session.groups = (0..groups)
        .map(|i| {
            Guid([
                i as u8, 0x5c, 0x7e, 0x11, 0x2b, 0x9d, 0x40, 0x1a, 0x83, 0x6f, 0xe2, 0x0c, 0x4b,
                0x77, 0xd1, 0x3a,
            ])
        })
        .collect();
    session.mfa = MfaEvidence {
        amr: vec!["pwd".into(), "mfa".into(), "rsa".into()],
        acrs: vec!["c1".into(), "c2".into()],
    };
    session
}

fn login(state: &str) -> LoginTransaction {
    LoginTransaction {
        state: state.into(),
        nonce: "n-0S6_WzA2Mj".into(),
        pkce_verifier: "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into(),
        return_path: "/owa/#path=/mail/inbox".into(),
        created_at: T0,
    }
}

/// xorshift64: deterministic pseudo-random input without a dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn session_opens_on_every_gateway_with_the_same_keys() {
    let secret = STANDARD.encode([42u8; 32]);
    let first = ring(vec![SessionKey::from_base64(&secret).unwrap()]);
    let second = ring(vec![SessionKey::from_base64(&secret).unwrap()]);
    let value = first.seal(&session(5)).unwrap();
    assert_eq!(second.open(&value), Some(session(5)));
}

#[test]
fn tampered_cookie_means_signed_out() {
    let seal = ring(vec![key(1)]);
    let value = seal.seal(&session(3)).unwrap();
    for index in 0..value.len() {
        let mut tampered = value.clone().into_bytes();
        tampered[index] = if tampered[index] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(seal.open(&tampered), None, "byte {index} changed");
    }
    // Flipping bits of the decoded bytes, then encoding properly, gets no further.
    let raw = URL_SAFE_NO_PAD.decode(&value).unwrap();
    for index in 0..raw.len() {
        let mut flipped = raw.clone();
        flipped[index] ^= 0x01;
        assert_eq!(
            seal.open(&URL_SAFE_NO_PAD.encode(&flipped)),
            None,
            "byte {index}"
        );
    }
}

#[test]
fn truncated_cookie_means_signed_out() {
    let seal = ring(vec![key(1)]);
    let value = seal.seal(&session(3)).unwrap();
    for len in 0..value.len() {
        assert_eq!(seal.open(&value[..len]), None, "first {len} characters");
    }
    let mut extended = value.clone();
    extended.push_str("AAAA");
    assert_eq!(seal.open(&extended), None);
}

#[test]
fn cookie_sealed_with_a_retired_key_still_opens_while_the_key_is_listed() {
    let before = ring(vec![key(1)]);
    let old_cookie = before.seal(&session(2)).unwrap();

    // Rotation: the new key seals, the old one still opens.
    let during = ring(vec![key(2), key(1)]);
    assert_eq!(during.open(&old_cookie), Some(session(2)));
    let new_cookie = during.seal(&session(2)).unwrap();
    assert_eq!(during.open(&new_cookie), Some(session(2)));
    // A gateway not yet reconfigured does not know the new key.
    assert_eq!(before.open(&new_cookie), None);

    // Once the old key is dropped, its cookies mean signed out.
    let after = ring(vec![key(2)]);
    assert_eq!(after.open(&old_cookie), None);
    assert_eq!(after.open(&new_cookie), Some(session(2)));
}

#[test]
fn cookie_from_a_foreign_key_ring_is_refused() {
    let ours = ring(vec![key(1), key(2)]);
    let theirs = ring(vec![key(3)]);
    let value = theirs.seal(&session(1)).unwrap();
    assert_eq!(ours.open(&value), None);
}

#[test]
fn cookie_from_a_key_that_shares_the_key_id_is_refused() {
    // Same id in the clear, different key: authentication, not the id, decides.
    let seal = ring(vec![key(1)]);
    let foreign = ring(vec![key(9)]);
    let ours = URL_SAFE_NO_PAD
        .decode(seal.seal(&session(1)).unwrap())
        .unwrap();
    let mut theirs = URL_SAFE_NO_PAD
        .decode(foreign.seal(&session(1)).unwrap())
        .unwrap();
    theirs[1..5].copy_from_slice(&ours[1..5]);
    assert_eq!(seal.open(&URL_SAFE_NO_PAD.encode(&theirs)), None);
}

#[test]
fn cookie_moved_to_another_cookie_name_is_refused() {
    let seal = ring(vec![key(1)]);
    let other = SessionSeal::new("__Host-other", vec![key(1)]).unwrap();
    let value = seal.seal(&session(1)).unwrap();
    assert_eq!(other.open(&value), None);

    // Nor can a session be presented as a pending login, or the reverse.
    let state = "af0ifjsldkj";
    assert_eq!(seal.open_login(state, &value), None);
    let pending = seal.seal_login(&login(state)).unwrap();
    assert_eq!(seal.open(&pending), None);
    // Nor a pending login under another state's cookie.
    assert_eq!(seal.open_login("another-state", &pending), None);
    assert_eq!(seal.open_login(state, &pending), Some(login(state)));
}

#[test]
fn cookie_in_another_format_version_is_refused() {
    let seal = ring(vec![key(1)]);
    let mut raw = URL_SAFE_NO_PAD
        .decode(seal.seal(&session(1)).unwrap())
        .unwrap();
    assert_eq!(raw[0], FORMAT_VERSION);
    raw[0] = FORMAT_VERSION.wrapping_add(1);
    assert_eq!(seal.open(&URL_SAFE_NO_PAD.encode(&raw)), None);
}

#[test]
fn expired_session_still_opens_so_the_gateway_can_say_why() {
    // Opening and expiry are separate: the audit event can name lifetime or idle.
    let seal = ring(vec![key(1)]);
    let value = seal.seal(&session(0)).unwrap();
    let opened = seal.open(&value).unwrap();
    let hour = Duration::from_secs(3600);
    assert_eq!(opened.check(T0 + 60, hour), Ok(()));
    assert_eq!(opened.check(T0 + 3600, hour), Err(SessionExpired::Idle));
    assert_eq!(
        opened.check(T0 + 10 * 3600, Duration::from_secs(86400)),
        Err(SessionExpired::Lifetime)
    );
}

#[test]
fn twenty_groups_fit_in_under_one_kilobyte() {
    let seal = ring(vec![key(1)]);
    for groups in [0, 5, 20] {
        let value = seal.seal(&session(groups)).unwrap();
        let pair = format!("{COOKIE}={value}");
        eprintln!(
            "{groups} groups: cookie value {} bytes, name=value {} bytes",
            value.len(),
            pair.len()
        );
        assert!(pair.len() < 1024, "{groups} groups: {} bytes", pair.len());
        assert_eq!(seal.open(&value), Some(session(groups)));
    }
}

#[test]
fn each_seal_uses_a_fresh_nonce() {
    let seal = ring(vec![key(1)]);
    let a = seal.seal(&session(1)).unwrap();
    let b = seal.seal(&session(1)).unwrap();
    assert_ne!(a, b);
    assert_eq!(seal.open(&a), seal.open(&b));
}

#[test]
fn session_ids_are_random() {
    let seal = ring(vec![key(1)]);
    let a = seal.new_session_id().unwrap();
    let b = seal.new_session_id().unwrap();
    assert_ne!(a, b);
    assert_ne!(a.0, [0; 16]);
}

#[test]
fn random_garbage_never_panics_and_never_opens() {
    let seal = ring(vec![key(1)]);
    let valid = URL_SAFE_NO_PAD
        .decode(seal.seal(&session(4)).unwrap())
        .unwrap();
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for round in 0..4000 {
        let input = match round % 4 {
            // base64url text of any length, sometimes past the size limit
            0 => {
                let len = rng.below(if round % 40 == 0 { 6000 } else { 900 });
                (0..len)
                    .map(|_| char::from(alphabet[rng.below(alphabet.len())]))
                    .collect::<String>()
            }
            // well-formed encoding of random bytes, starting with the right version
            1 => {
                let len = rng.below(700);
                let mut raw: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                if let Some(first) = raw.first_mut() {
                    *first = FORMAT_VERSION;
                }
                URL_SAFE_NO_PAD.encode(raw)
            }
            // a real cookie with a few bytes changed, or cut
            2 => {
                let mut raw = valid.clone();
                for _ in 0..=rng.below(3) {
                    let at = rng.below(raw.len());
                    raw[at] ^= (rng.next() as u8) | 1;
                }
                raw.truncate(raw.len() - rng.below(3));
                URL_SAFE_NO_PAD.encode(raw)
            }
            // any characters at all
            _ => {
                let len = rng.below(300);
                (0..len)
                    .map(|_| char::from_u32(rng.below(0x800) as u32).unwrap_or('?'))
                    .collect::<String>()
            }
        };
        assert_eq!(seal.open(&input), None, "round {round}: {input:?}");
        assert_eq!(seal.open_login("state", &input), None, "round {round}");
    }
}

#[test]
fn random_cookie_headers_never_panic() {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let chars = b"a=; \t\"_-X";
    for _ in 0..3000 {
        let len = rng.below(80);
        let bytes: Vec<u8> = (0..len)
            .map(|_| match rng.below(4) {
                0 => 0x20 + rng.below(0x5f) as u8,
                1 => 0x80 + rng.below(0x80) as u8,
                _ => chars[rng.below(chars.len())],
            })
            .collect();
        let mut headers = http::HeaderMap::new();
        if let Ok(value) = http::HeaderValue::from_bytes(&bytes) {
            headers.append(http::header::COOKIE, value.clone());
            headers.append(http::header::COOKIE, value);
        }
        let _ = find_cookie(&headers, "a");
        let _ = cookies(&headers).count();
        strip_cookies(&mut headers, |name| name == "a");
        assert!(find_cookie(&headers, "a").is_none());
    }
}

#[test]
fn key_shorter_than_32_bytes_is_refused() {
    let short = STANDARD.encode([7u8; 31]);
    let error = SessionKey::from_base64(&short).unwrap_err();
    assert_eq!(error, KeyError::TooShort { bytes: 31 });
    let message = error.to_string();
    assert!(
        message.contains("31 bytes") && message.contains("32"),
        "{message}"
    );
    assert!(!message.contains(&short), "the error must not echo the key");
    assert!(SessionKey::from_base64("").is_err());
    assert_eq!(
        SessionKey::from_base64("not base64 at all!").unwrap_err(),
        KeyError::NotBase64
    );
}

#[test]
fn key_is_read_as_openssl_and_url_safe_base64_print_it() {
    let bytes: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37) ^ 0xfb).collect();
    let padded = format!("{}\n", STANDARD.encode(&bytes)); // `openssl rand -base64 32 > file`
    let url_safe = URL_SAFE_NO_PAD.encode(&bytes);
    let a = SessionKey::from_base64(&padded).unwrap();
    let b = SessionKey::from_base64(&url_safe).unwrap();
    assert_eq!(a.id(), b.id());
    let value = ring(vec![a]).seal(&session(0)).unwrap();
    assert!(ring(vec![b]).open(&value).is_some());
}

#[test]
fn every_byte_of_a_longer_key_counts() {
    let mut long = [5u8; 64];
    let first = SessionKey::from_bytes(&long).unwrap();
    long[63] = 6;
    let second = SessionKey::from_bytes(&long).unwrap();
    assert_ne!(first.id(), second.id());
    let value = ring(vec![first]).seal(&session(0)).unwrap();
    assert_eq!(ring(vec![second]).open(&value), None);
}

#[test]
fn key_material_never_reaches_a_log_line() {
    let seal = ring(vec![key(0xab), key(0xcd)]);
    let printed = format!("{seal:?}");
    assert!(printed.contains(COOKIE), "{printed}");
    assert_eq!(seal.key_ids().len(), 2);
    for id in seal.key_ids() {
        assert!(printed.contains(&id), "{printed}");
    }
    assert!(!printed.contains("abab"), "{printed}");
}

#[test]
fn key_ring_needs_a_key_and_a_valid_cookie_name() {
    assert_eq!(
        SessionSeal::new(COOKIE, Vec::new()).unwrap_err(),
        KeyError::NoKeys
    );
    let error = SessionSeal::new("mfa gw", vec![key(1)]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "`mfa gw` is not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~ only)"
    );
}

#[test]
fn each_pending_login_has_its_own_gateway_cookie() {
    let seal = ring(vec![key(1)]);
    let a = seal.login_cookie_name("state-a");
    let b = seal.login_cookie_name("state-b");
    assert_ne!(a, b);
    assert_eq!(a, seal.login_cookie_name("state-a"));
    for name in [&a, &b] {
        assert!(name.starts_with("__Host-mfagw-login-"), "{name}");
        assert!(is_valid_cookie_name(name), "{name}");
        assert!(seal.is_login_cookie(name) && seal.is_gateway_cookie(name));
    }
    // Whatever a browser sends as state, the name stays a valid cookie name.
    assert!(is_valid_cookie_name(
        &seal.login_cookie_name("; Domain=evil\r\n")
    ));
    assert!(seal.is_gateway_cookie(COOKIE));
    assert!(!seal.is_login_cookie(COOKIE));
    assert!(!seal.is_gateway_cookie("X-OWA-CANARY"));
    assert!(!seal.is_gateway_cookie("__Host-mfagw2"));
}

#[test]
fn sealed_cookies_round_trip_through_the_headers() {
    let seal = ring(vec![key(1)]);
    let value = seal.seal(&session(5)).unwrap();
    let set = set_cookie_header(COOKIE, &value, Duration::from_secs(36000), SameSite::Lax);
    assert!(set
        .to_str()
        .unwrap()
        .starts_with(&format!("{COOKIE}={value};")));
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::COOKIE,
        http::HeaderValue::from_str(&format!("X-OWA-CANARY=x; {COOKIE}={value}")).unwrap(),
    );
    let found = find_cookie(&headers, seal.cookie_name()).unwrap();
    assert_eq!(seal.open(found), Some(session(5)));
    strip_cookies(&mut headers, |name| seal.is_gateway_cookie(name));
    assert_eq!(headers[http::header::COOKIE], "X-OWA-CANARY=x");
}

#[test]
fn exchange_binding_names_one_session_and_cannot_be_made_or_moved() {
    let seal = ring(vec![key(1)]);
    assert_eq!(seal.binding_cookie_name(), "__Host-mfagw-exchange");
    assert!(seal.is_gateway_cookie(seal.binding_cookie_name()));
    assert!(!seal.is_login_cookie(seal.binding_cookie_name()));
    let a = session(0);
    let b = Session {
        id: SessionId([9; 16]),
        ..session(0)
    };
    let binding = seal.seal_binding(&a.id).unwrap();
    assert_eq!(seal.open_binding(&binding), Some(a.id));
    assert_ne!(seal.open_binding(&binding), Some(b.id));
    // Another key ring's binding, a session cookie's value, a binding as a session: nothing.
    let other = ring(vec![key(2)]);
    assert_eq!(seal.open_binding(&other.seal_binding(&a.id).unwrap()), None);
    assert_eq!(seal.open_binding(&seal.seal(&a).unwrap()), None);
    assert_eq!(seal.open(&binding), None);
    // Rotation: a binding sealed with the old first key still opens.
    let rotated = ring(vec![key(2), key(1)]);
    assert_eq!(rotated.open_binding(&binding), Some(a.id));
}
