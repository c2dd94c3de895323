//! The test kit (cargo feature `test-kit`, which only the tests turn on): how the test suites
//! steer the provider and read it back. They forge the next ID token ([`Forgery`]), take the
//! provider down, backdate `auth_time`, rotate and withhold signing keys, read the calls it
//! received ([`ProviderCall`]) to prove, for example, that the token endpoint was never
//! reached, and walk its pages as a browser would ([`sign_in_form`], [`parse_form_post`]).
//!
//! None of this is in the shipped gateway: `mfa-gateway demo` needs an honest provider, and a
//! binary that can mint `alg: none` tokens or tokens keyed with the public key has no business
//! on a server.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use serde_json::{Map, Value};

use super::endpoints::{answer, text};
use super::form::{self, Params};
use super::jwt::{self, b64, SigningKey};
use super::{generate_key, ClientAuthMethod, ProviderEndpoint, Reply, Shared, TestProvider};

/// How the next ID token is signed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Signing {
    /// RS256 with the current published key.
    #[default]
    Normal,
    /// Header `alg: "none"` and an empty signature.
    AlgNone,
    /// Header `alg: "HS256"`, HMAC-SHA256 keyed with the current public key's SPKI PEM
    /// (`-----BEGIN PUBLIC KEY-----`, LF line endings): the algorithm-confusion attack.
    HmacWithPublicKey,
    /// RS256 with a fresh key that is not in the JWKS, under the current key's `kid`.
    ForeignKey,
    /// RS256 with a key whose `kid` is not (yet) in the JWKS. The key stays pending:
    /// [`TestProvider::publish_pending_key`] or [`TestProvider::rotate_signing_key`] publishes
    /// it, and normal tokens are then signed with it.
    UnpublishedKid,
}

/// Changes to the next ID token the provider issues.
#[derive(Clone, Debug, Default)]
pub struct Forgery {
    /// Merged into the claims; a JSON `null` removes the claim.
    pub claims: Map<String, Value>,
    /// Merged into the JOSE header after the signing mode set `alg`/`kid`; `null` removes.
    pub header: Map<String, Value>,
    pub signing: Signing,
}

impl Forgery {
    /// Sets (or, with `Value::Null`, removes) one claim.
    pub fn claim(mut self, name: &str, value: impl Into<Value>) -> Forgery {
        self.claims.insert(name.to_owned(), value.into());
        self
    }

    /// Removes one claim.
    pub fn without(self, name: &str) -> Forgery {
        self.claim(name, Value::Null)
    }

    /// Sets (or, with `Value::Null`, removes) one header member.
    pub fn header(mut self, name: &str, value: impl Into<Value>) -> Forgery {
        self.header.insert(name.to_owned(), value.into());
        self
    }

    pub fn signing(mut self, signing: Signing) -> Forgery {
        self.signing = signing;
        self
    }
}

/// One request the provider received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderCall {
    pub endpoint: ProviderEndpoint,
    pub method: Method,
    /// Query parameters (GET) or form fields (POST), in the order sent.
    pub params: Vec<(String, String)>,
    /// Token endpoint only: the client authentication method presented.
    pub client_auth: Option<ClientAuthMethod>,
    /// The status the provider answered with.
    pub status: StatusCode,
}

impl ProviderCall {
    /// The first value of parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// What the tests have set, and what the provider keeps for them to read back.
#[derive(Default)]
pub(super) struct Controls {
    /// Every endpoint answers 503, as when Entra cannot be reached.
    down: bool,
    /// A key used by an `UnpublishedKid` forgery, waiting to be published.
    pending_key: Option<Arc<SigningKey>>,
    forgeries: VecDeque<PreparedForgery>,
    calls: Vec<ProviderCall>,
    /// Each user's latest `sid`.
    last_sid: HashMap<String, String>,
    /// How far in the past sign-ins report `auth_time`.
    auth_time_offset: Duration,
}

impl Controls {
    /// The `auth_time` of a sign-in completed at `now`.
    pub(super) fn auth_time(&self, now: u64) -> u64 {
        now.saturating_sub(self.auth_time_offset.as_secs())
    }

    pub(super) fn signed_in(&mut self, username: &str, sid: &str) {
        self.last_sid.insert(username.to_owned(), sid.to_owned());
    }
}

impl TestProvider {
    /// The `kid` that signs normal tokens now.
    pub fn current_kid(&self) -> String {
        self.shared
            .lock()
            .keys
            .first()
            .map(|key| key.kid.clone())
            .unwrap_or_default()
    }

    /// Switches to a new signing key and returns its `kid`: the pending key of an
    /// `UnpublishedKid` forgery if there is one, else a fresh key. The JWKS then serves the new
    /// key, and the previous ones too when `keep_old`.
    pub fn rotate_signing_key(&self, keep_old: bool) -> std::io::Result<String> {
        let pending = self.shared.lock().test_kit.pending_key.take();
        let key = match pending {
            Some(key) => key,
            None => generate_key()?,
        };
        let kid = key.kid.clone();
        let mut state = self.shared.lock();
        if !keep_old {
            state.keys.clear();
        }
        state.keys.retain(|old| old.kid != kid);
        state.keys.insert(0, key);
        Ok(kid)
    }

    /// Publishes the pending key of an `UnpublishedKid` forgery as the signing key, keeping
    /// the others in the JWKS; returns its `kid`, or `None` when no key is pending.
    pub fn publish_pending_key(&self) -> Option<String> {
        let mut state = self.shared.lock();
        let key = state.test_kit.pending_key.take()?;
        let kid = key.kid.clone();
        state.keys.insert(0, key);
        Some(kid)
    }

    /// `false`: every endpoint answers 503, as when Entra cannot be reached.
    pub fn set_available(&self, available: bool) {
        self.shared.lock().test_kit.down = !available;
    }

    /// Queues a forgery: each ID token issued takes the next one queued. Keys the forgery
    /// needs are generated now.
    pub fn forge_next(&self, forgery: Forgery) -> std::io::Result<()> {
        let key = match forgery.signing {
            Signing::ForeignKey => Some(generate_key()?),
            Signing::UnpublishedKid => {
                let pending = self.shared.lock().test_kit.pending_key.clone();
                let key = match pending {
                    Some(key) => key,
                    None => generate_key()?,
                };
                self.shared.lock().test_kit.pending_key = Some(key.clone());
                Some(key)
            }
            Signing::Normal | Signing::AlgNone | Signing::HmacWithPublicKey => None,
        };
        self.shared
            .lock()
            .test_kit
            .forgeries
            .push_back(PreparedForgery {
                claims: forgery.claims,
                header: forgery.header,
                signing: forgery.signing,
                key,
            });
        Ok(())
    }

    /// Every request received so far, oldest first.
    pub fn calls(&self) -> Vec<ProviderCall> {
        self.shared.lock().test_kit.calls.clone()
    }

    /// The calls that reached `endpoint`.
    pub fn calls_to(&self, endpoint: ProviderEndpoint) -> Vec<ProviderCall> {
        self.shared
            .lock()
            .test_kit
            .calls
            .iter()
            .filter(|call| call.endpoint == endpoint)
            .cloned()
            .collect()
    }

    pub fn clear_calls(&self) {
        self.shared.lock().test_kit.calls.clear();
    }

    /// Sign-ins from now on report `auth_time` this far in the past (tokens are still fresh).
    pub fn set_auth_time_offset(&self, offset: Duration) {
        self.shared.lock().test_kit.auth_time_offset = offset;
    }

    /// The `sid` of `username`'s latest sign-in (what front-channel logout would send).
    pub fn last_sid(&self, username: &str) -> Option<String> {
        self.shared.lock().test_kit.last_sid.get(username).cloned()
    }
}

/// Answers a request as [`answer`] does, unless a test took the provider down, and keeps the
/// call for [`TestProvider::calls`].
pub(super) fn answer_recorded(
    shared: &Shared,
    endpoint: ProviderEndpoint,
    method: Method,
    headers: &HeaderMap,
    params: Params,
    body_error: Option<&'static str>,
) -> Reply {
    let down = shared.lock().test_kit.down;
    let (reply, client_auth) = if down {
        let reply = text(
            StatusCode::SERVICE_UNAVAILABLE,
            "The service is unavailable.",
        );
        (reply, None)
    } else {
        answer(shared, &endpoint, &method, headers, &params, body_error)
    };
    shared.lock().test_kit.calls.push(ProviderCall {
        endpoint,
        method,
        params: params.0,
        client_auth,
        status: reply.status(),
    });
    reply
}

/// The ID token for `claims`: signed with `current` as usual, or forged as the next queued
/// forgery says.
pub(super) fn issue_id_token(
    shared: &Shared,
    claims: Map<String, Value>,
    current: &SigningKey,
) -> Result<String, String> {
    let forgery = shared.lock().test_kit.forgeries.pop_front();
    match forgery {
        None => jwt::issue(&claims, current),
        Some(forgery) => forge(claims, forgery, current),
    }
}

/// A forgery with the key it needs already made, so issuing never generates keys.
struct PreparedForgery {
    claims: Map<String, Value>,
    header: Map<String, Value>,
    signing: Signing,
    /// The foreign key (`ForeignKey`) or the not-yet-published key (`UnpublishedKid`).
    key: Option<Arc<SigningKey>>,
}

fn forge(
    mut claims: Map<String, Value>,
    forgery: PreparedForgery,
    current: &SigningKey,
) -> Result<String, String> {
    let mut header = jwt::id_token_header(current);
    merge(&mut claims, &forgery.claims);
    match forgery.signing {
        Signing::AlgNone => {
            header.insert("alg".into(), "none".into());
        }
        Signing::HmacWithPublicKey => {
            header.insert("alg".into(), "HS256".into());
        }
        Signing::UnpublishedKid => {
            if let Some(key) = &forgery.key {
                header.insert("kid".into(), key.kid.clone().into());
                header.insert("x5t".into(), key.kid.clone().into());
            }
        }
        Signing::Normal | Signing::ForeignKey => {}
    }
    merge(&mut header, &forgery.header);
    let input = jwt::signing_input(&header, &claims)?;
    let signature = match (forgery.signing, &forgery.key) {
        (Signing::Normal, _) => current.sign_rs256(input.as_bytes())?,
        (Signing::AlgNone, _) => Vec::new(),
        (Signing::HmacWithPublicKey, _) => {
            let pem = current.public_pem()?;
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, pem.as_bytes());
            ring::hmac::sign(&key, input.as_bytes()).as_ref().to_vec()
        }
        (Signing::ForeignKey | Signing::UnpublishedKid, Some(key)) => {
            key.sign_rs256(input.as_bytes())?
        }
        (Signing::ForeignKey | Signing::UnpublishedKid, None) => {
            return Err("the forgery's key was not prepared".into())
        }
    };
    Ok(format!("{input}.{}", b64(signature)))
}

/// Merges `changes` into `target`; a JSON `null` removes the member.
fn merge(target: &mut Map<String, Value>, changes: &Map<String, Value>) {
    for (name, value) in changes {
        if value.is_null() {
            target.remove(name);
        } else {
            target.insert(name.clone(), value.clone());
        }
    }
}

impl SigningKey {
    /// The SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`, LF line endings): the bytes
    /// an attacker would use as an HMAC secret in the classic algorithm-confusion attack.
    pub(super) fn public_pem(&self) -> Result<String, String> {
        self.private
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| format!("cannot encode the public key: {e}"))
    }
}

/// Turns the gateway's redirect to the authorization endpoint into the POST the sign-in page
/// would send: the URL to post to, and the form (every original parameter, `user`, `mfa` and
/// `decision=approve`). Change `decision` to `cancel` to press Cancel.
pub fn sign_in_form(authorize_url: &str, user: &str, mfa: bool) -> (String, Vec<(String, String)>) {
    let without_fragment = authorize_url.split('#').next().unwrap_or(authorize_url);
    let (url, query) = without_fragment
        .split_once('?')
        .unwrap_or((without_fragment, ""));
    let mut fields = form::decode(query);
    fields.retain(|(name, _)| !matches!(name.as_str(), "user" | "mfa" | "decision"));
    fields.push(("user".into(), user.into()));
    fields.push(("mfa".into(), if mfa { "yes" } else { "no" }.into()));
    fields.push(("decision".into(), "approve".into()));
    (url.to_owned(), fields)
}

/// Reads a `form_post` page from the provider: the redirect URI it posts to and its fields
/// (`code`, `state`, `session_state`, or `error`, `error_description`, `state`).
pub fn parse_form_post(html: &str) -> Option<(String, Vec<(String, String)>)> {
    let action = attribute(html.split_once("<form ")?.1, "action")?;
    let mut fields = Vec::new();
    for input in html.split("<input ").skip(1) {
        if attribute(input, "type").as_deref() != Some("hidden") {
            continue;
        }
        fields.push((attribute(input, "name")?, attribute(input, "value")?));
    }
    Some((action, fields))
}

/// The value of `name="…"` within one tag starting at `tag`.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let tag = &tag[..tag.find('>')?];
    let needle = format!(" {name}=\"");
    let start = format!(" {tag}").find(&needle)? + needle.len() - 1;
    let rest = &tag[start..];
    Some(unescape(&rest[..rest.find('"')?]))
}

/// Undoes the escaping of the provider's pages.
fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}
