//! The token endpoint: client authentication (secret, or a `private_key_jwt` assertion checked
//! as Entra checks certificate credentials), the authorization code with its PKCE binding, and
//! the Entra v1.0 ID token it is exchanged for.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::header::HeaderValue;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::endpoints::{json_reply, oauth_error, random_token, CodeGrant, CODE_LIFETIME};
use super::form::{self, Params};
use super::jwt::{self, b64, AssertionRules};
use super::{
    unix_now, ClientAuthMethod, ClientCredential, Reply, Shared, TestUser, MAX_GROUPS_IN_TOKEN,
    TOKEN_PATH,
};

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

struct TokenError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

fn invalid_client(description: impl Into<String>) -> TokenError {
    TokenError {
        status: StatusCode::UNAUTHORIZED,
        error: "invalid_client",
        description: description.into(),
    }
}

fn invalid_grant(description: impl Into<String>) -> TokenError {
    TokenError {
        status: StatusCode::BAD_REQUEST,
        error: "invalid_grant",
        description: description.into(),
    }
}

fn invalid_request(description: impl Into<String>) -> TokenError {
    TokenError {
        status: StatusCode::BAD_REQUEST,
        error: "invalid_request",
        description: description.into(),
    }
}

/// POST: exchanges a code for tokens. Also returns the client authentication method presented.
pub(super) fn token(
    shared: &Shared,
    headers: &HeaderMap,
    params: &Params,
) -> (Reply, Option<ClientAuthMethod>) {
    let mut method = None;
    let reply = match exchange(shared, headers, params, &mut method) {
        Ok(body) => {
            let mut reply = json_reply(StatusCode::OK, &body);
            reply
                .headers_mut()
                .insert("pragma", HeaderValue::from_static("no-cache"));
            reply
        }
        Err(e) => oauth_error(
            e.status,
            e.error,
            &e.description,
            e.status == StatusCode::UNAUTHORIZED
                && method == Some(ClientAuthMethod::ClientSecretBasic),
        ),
    };
    (reply, method)
}

fn exchange(
    shared: &Shared,
    headers: &HeaderMap,
    params: &Params,
    method: &mut Option<ClientAuthMethod>,
) -> Result<Value, TokenError> {
    let client_id = authenticate_client(shared, headers, params, method)?;
    if params.require("grant_type").map_err(invalid_request)? != "authorization_code" {
        return Err(TokenError {
            status: StatusCode::BAD_REQUEST,
            error: "unsupported_grant_type",
            description: "grant_type must be authorization_code".into(),
        });
    }
    let code = params.require("code").map_err(invalid_request)?;
    let redirect_uri = params.require("redirect_uri").map_err(invalid_request)?;
    let verifier = params.require("code_verifier").map_err(invalid_request)?;
    let now = unix_now();
    // The code is spent by this attempt whatever its outcome: a code is good for one try.
    let grant = shared.lock().codes.remove(code).ok_or_else(|| {
        invalid_grant("AADSTS70008: The authorization code is unknown, expired or already used.")
    })?;
    if grant.issued_at + CODE_LIFETIME < now {
        return Err(invalid_grant(
            "AADSTS70008: The authorization code has expired.",
        ));
    }
    if grant.client_id != client_id {
        return Err(invalid_grant(
            "The authorization code was issued to another client.",
        ));
    }
    if grant.redirect_uri != redirect_uri {
        return Err(invalid_grant(
            "AADSTS500117: The redirect_uri does not match the one the code was issued for.",
        ));
    }
    let verifier_ok = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if !verifier_ok || b64(Sha256::digest(verifier.as_bytes())) != grant.code_challenge {
        return Err(invalid_grant(
            "AADSTS501481: The code_verifier does not match the code_challenge of the authorization request.",
        ));
    }
    let user = shared
        .user(&grant.username)
        .ok_or_else(|| invalid_grant("the user no longer exists"))?;
    let id_token = signed_id_token(shared, &grant, user, now, None).map_err(|e| TokenError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        error: "server_error",
        description: e,
    })?;
    let lifetime = shared.token_lifetime.as_secs();
    Ok(json!({
        "token_type": "Bearer",
        "scope": grant.scope,
        "expires_in": lifetime,
        "access_token": random_token(48),
        "id_token": id_token,
    }))
}

/// Authenticates the client by the one method it presented; returns its id.
fn authenticate_client(
    shared: &Shared,
    headers: &HeaderMap,
    params: &Params,
    method: &mut Option<ClientAuthMethod>,
) -> Result<String, TokenError> {
    let basic = headers
        .get(http::header::AUTHORIZATION)
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
                .map(|(_, credentials)| credentials.trim().to_owned())
                .ok_or_else(|| invalid_client("the Authorization header is not Basic"))
        })
        .transpose()?;
    let secret = params.get("client_secret").map_err(invalid_request)?;
    let assertion_type = params
        .get("client_assertion_type")
        .map_err(invalid_request)?;
    let assertion = params.get("client_assertion").map_err(invalid_request)?;
    let claimed_id = params.get("client_id").map_err(invalid_request)?;
    let presented = [basic.is_some(), secret.is_some(), assertion.is_some()]
        .iter()
        .filter(|p| **p)
        .count();
    if presented > 1 {
        return Err(invalid_request(
            "more than one client authentication method was used",
        ));
    }

    if let Some(credentials) = basic {
        *method = Some(ClientAuthMethod::ClientSecretBasic);
        let decoded = STANDARD
            .decode(credentials)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| invalid_client("the Basic credentials are not base64"))?;
        let (id, secret) = decoded
            .split_once(':')
            .ok_or_else(|| invalid_client("the Basic credentials have no ':'"))?;
        // RFC 6749 §2.3.1: both halves are form-urlencoded before base64.
        let id = form::decode(&format!("x={id}"))
            .pop()
            .map(|(_, v)| v)
            .unwrap_or_default();
        let secret = form::decode(&format!("x={secret}"))
            .pop()
            .map(|(_, v)| v)
            .unwrap_or_default();
        if claimed_id.is_some_and(|claimed| claimed != id) {
            return Err(invalid_request(
                "client_id differs from the Basic credentials",
            ));
        }
        check_secret(shared, &id, &secret)?;
        return Ok(id);
    }
    if let Some(secret) = secret {
        *method = Some(ClientAuthMethod::ClientSecretPost);
        let id = claimed_id.ok_or_else(|| invalid_request("client_id is missing"))?;
        check_secret(shared, id, secret)?;
        return Ok(id.to_owned());
    }
    if let Some(assertion) = assertion {
        *method = Some(ClientAuthMethod::PrivateKeyJwt);
        if assertion_type != Some(JWT_BEARER) {
            return Err(invalid_request(format!(
                "client_assertion_type must be {JWT_BEARER}"
            )));
        }
        let token =
            jwt::decode(assertion).map_err(|e| invalid_client(format!("client_assertion: {e}")))?;
        let id = token
            .claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid_client("client_assertion has no iss"))?
            .to_owned();
        if claimed_id.is_some_and(|claimed| claimed != id) {
            return Err(invalid_client("client_id differs from the assertion's iss"));
        }
        let credential = shared.lock().clients.get(&id).cloned();
        let Some(ClientCredential::KeyPair {
            public_key,
            cert_der,
        }) = credential
        else {
            return Err(invalid_client(format!(
                "AADSTS700027: no certificate credential is registered for client {id}"
            )));
        };
        let token_endpoint = shared.url(TOKEN_PATH);
        let jti = token
            .verify_assertion(&AssertionRules {
                client_id: &id,
                public_key: &public_key,
                cert_der: cert_der.as_deref(),
                token_endpoint: &token_endpoint,
                now: unix_now(),
            })
            .map_err(|e| invalid_client(format!("AADSTS700027: client_assertion: {e}")))?;
        if !shared.lock().seen_jtis.insert(jti) {
            return Err(invalid_client(
                "AADSTS700024: client_assertion: this jti was already used",
            ));
        }
        return Ok(id);
    }
    Err(invalid_client("no client authentication was presented"))
}

fn check_secret(shared: &Shared, client_id: &str, secret: &str) -> Result<(), TokenError> {
    match shared.lock().clients.get(client_id) {
        Some(ClientCredential::Secret(registered)) if registered == secret => Ok(()),
        Some(ClientCredential::Secret(_)) => Err(invalid_client(
            "AADSTS7000215: Invalid client secret provided.",
        )),
        Some(ClientCredential::KeyPair { .. }) => Err(invalid_client(
            "this client authenticates with a certificate, not a secret",
        )),
        None => Err(invalid_client(format!(
            "AADSTS700016: Application with identifier '{client_id}' was not found in the directory."
        ))),
    }
}

/// The signed ID token of a sign-in; with `code` (the hybrid flow, where the token comes with
/// the code from the authorization endpoint) it carries the code's `c_hash`.
pub(super) fn signed_id_token(
    shared: &Shared,
    grant: &CodeGrant,
    user: &TestUser,
    now: u64,
    code: Option<&str>,
) -> Result<String, String> {
    let mut claims = id_token_claims(shared, grant, user, now);
    if let Some(code) = code {
        let digest = Sha256::digest(code.as_bytes());
        claims.insert("c_hash".to_owned(), b64(&digest[..16]).into());
    }
    let current = shared
        .lock()
        .keys
        .first()
        .cloned()
        .ok_or_else(|| "no signing key".to_owned())?;
    #[cfg(feature = "test-kit")]
    let id_token = super::test_kit::issue_id_token(shared, claims, &current);
    #[cfg(not(feature = "test-kit"))]
    let id_token = jwt::issue(&claims, &current);
    id_token
}

/// The claims of an Entra v1.0 ID token for this sign-in.
fn id_token_claims(
    shared: &Shared,
    grant: &CodeGrant,
    user: &TestUser,
    now: u64,
) -> Map<String, Value> {
    let mut claims = Map::new();
    let mut set = |name: &str, value: Value| {
        claims.insert(name.to_owned(), value);
    };
    set("aud", grant.client_id.clone().into());
    set("iss", shared.issuer.clone().into());
    set("iat", now.into());
    set("nbf", now.into());
    set("exp", (now + shared.token_lifetime.as_secs()).into());
    set(
        "amr",
        if grant.mfa {
            json!(["pwd", "mfa"])
        } else {
            json!(["pwd"])
        },
    );
    if !grant.acrs.is_empty() {
        set("acrs", json!(grant.acrs));
    }
    set("auth_time", grant.auth_time.into());
    set("nonce", grant.nonce.clone().into());
    set("tid", shared.tenant_id.clone().into());
    set("oid", user.oid.clone().into());
    // Entra's `sub` is pairwise: the same person has a different `sub` in each application.
    let pairwise = Sha256::digest(format!(
        "{}|{}|{}",
        shared.tenant_id, user.oid, grant.client_id
    ));
    set("sub", b64(pairwise).into());
    set("upn", user.upn.clone().into());
    set("unique_name", user.upn.clone().into());
    set("name", user.name.clone().into());
    if let Some(sid) = &user.onprem_sid {
        set("onprem_sid", sid.clone().into());
    }
    if user.groups.len() > MAX_GROUPS_IN_TOKEN {
        // The overage marker of a v1.0 JWT: the groups must be fetched from the directory.
        set("_claim_names", json!({ "groups": "src1" }));
        set(
            "_claim_sources",
            json!({ "src1": { "endpoint": format!(
                "https://graph.windows.net/{}/users/{}/getMemberObjects",
                shared.tenant_id, user.oid
            ) } }),
        );
    } else if !user.groups.is_empty() {
        set("groups", json!(user.groups));
    }
    for (claim, value) in &user.extra_claims {
        set(claim, value.clone().into());
    }
    set("ipaddr", "127.0.0.1".into());
    set("sid", grant.sid.clone().into());
    set("uti", random_token(16).into());
    set("ver", "1.0".into());
    claims
}
