//! The provider's endpoints under `/<tid>/`: discovery, keys, authorize (the sign-in page and
//! its decision), token, logout.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;
use rand::RngCore;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::form::{self, Params};
use super::jwt::{self, b64, AssertionRules};
use super::pages;
use super::{
    unix_now, ClientAuthMethod, ClientCredential, Reply, Shared, TestUser, AUTHORIZE_PATH,
    KEYS_PATH, LOGOUT_PATH, MAX_GROUPS_IN_TOKEN, TOKEN_PATH,
};

/// An authorization code is good for this long, and once.
const CODE_LIFETIME: u64 = 60;
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// What an issued authorization code stands for.
pub(super) struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    nonce: String,
    scope: String,
    username: String,
    mfa: bool,
    auth_time: u64,
    /// Granted authentication contexts (only with MFA).
    acrs: Vec<String>,
    sid: String,
    issued_at: u64,
}

// ---------------------------------------------------------------------------------------------
// Responses

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub(super) fn text(status: StatusCode, message: &str) -> Reply {
    respond(status, "text/plain; charset=utf-8", format!("{message}\n"))
}

fn html(body: String, csp: &'static str) -> Reply {
    let mut response = respond(StatusCode::OK, "text/html; charset=utf-8", body);
    let headers = response.headers_mut();
    headers.insert("content-security-policy", HeaderValue::from_static(csp));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    response
}

fn json_reply(status: StatusCode, value: &Value) -> Reply {
    respond(status, "application/json; charset=utf-8", value.to_string())
}

fn redirect(location: &str) -> Reply {
    match HeaderValue::from_str(location) {
        Ok(value) => {
            let mut response = respond(StatusCode::FOUND, "text/plain; charset=utf-8", "");
            response.headers_mut().insert(LOCATION, value);
            response
        }
        Err(_) => text(
            StatusCode::BAD_REQUEST,
            "The redirect URI is not a valid URL.",
        ),
    }
}

pub(super) fn oauth_error(
    status: StatusCode,
    error: &str,
    description: &str,
    basic: bool,
) -> Reply {
    let mut response = json_reply(
        status,
        &json!({ "error": error, "error_description": description }),
    );
    if basic {
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"token endpoint\""),
        );
    }
    response
}

fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    b64(buf)
}

fn guid() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

// ---------------------------------------------------------------------------------------------
// Discovery and keys

pub(super) fn discovery(shared: &Shared) -> Reply {
    let mut response = json_reply(
        StatusCode::OK,
        &json!({
            "issuer": shared.issuer,
            "authorization_endpoint": shared.url(AUTHORIZE_PATH),
            "token_endpoint": shared.url(TOKEN_PATH),
            "jwks_uri": shared.url(KEYS_PATH),
            "end_session_endpoint": shared.url(LOGOUT_PATH),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query", "form_post"],
            "scopes_supported": ["openid"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported":
                ["client_secret_post", "client_secret_basic", "private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS256", "PS256"],
            "code_challenge_methods_supported": ["S256"],
            "claims_parameter_supported": true,
            "claims_supported": [
                "sub", "iss", "aud", "exp", "iat", "nbf", "auth_time", "amr", "acrs", "nonce",
                "tid", "oid", "upn", "unique_name", "name", "onprem_sid", "groups", "sid", "ver"
            ],
            "frontchannel_logout_supported": true,
            "http_logout_supported": true,
        }),
    );
    // Entra lets discovery and keys be cached for a day.
    response.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("max-age=86400, private"),
    );
    response
}

pub(super) fn keys(shared: &Shared) -> Reply {
    let keys: Vec<Value> = shared.lock().keys.iter().map(|key| key.jwk()).collect();
    let mut response = json_reply(StatusCode::OK, &json!({ "keys": keys }));
    response.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("max-age=86400, private"),
    );
    response
}

// ---------------------------------------------------------------------------------------------
// Authorization

enum ResponseMode {
    Query,
    FormPost,
}

/// A validated authorization request.
struct AuthorizeRequest {
    client_id: String,
    redirect_uri: String,
    response_mode: ResponseMode,
    scope: String,
    state: String,
    nonce: String,
    code_challenge: String,
    prompt: Option<String>,
    /// Authentication contexts asked for in the `claims` parameter.
    acrs: Vec<String>,
}

fn is_http_url(text: &str) -> bool {
    (text.starts_with("https://") || text.starts_with("http://"))
        && !text.contains('#')
        && !text.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl AuthorizeRequest {
    fn parse(shared: &Shared, params: &Params) -> Result<AuthorizeRequest, String> {
        let client_id = params.require("client_id")?;
        if !shared.lock().clients.contains_key(client_id) {
            return Err(format!(
                "AADSTS700016: Application with identifier '{client_id}' was not found in the directory."
            ));
        }
        let redirect_uri = params.require("redirect_uri")?;
        if !is_http_url(redirect_uri) {
            return Err("redirect_uri must be an absolute http(s) URL without a fragment".into());
        }
        if params.require("response_type")? != "code" {
            return Err("response_type must be code".into());
        }
        let response_mode = match params.get("response_mode")? {
            None | Some("query") => ResponseMode::Query,
            Some("form_post") => ResponseMode::FormPost,
            Some(_) => return Err("response_mode must be query or form_post".into()),
        };
        let scope = params.require("scope")?;
        if !scope.split(' ').any(|s| s == "openid") {
            return Err("scope must include openid".into());
        }
        if params.require("code_challenge_method")? != "S256" {
            return Err("code_challenge_method must be S256".into());
        }
        let code_challenge = params.require("code_challenge")?;
        if jwt::unb64(code_challenge).map(|d| d.len()) != Ok(32) {
            return Err("code_challenge must be a base64url SHA-256 digest".into());
        }
        let state = params.require("state")?;
        let nonce = params.require("nonce")?;
        if let Some(max_age) = params.get("max_age")? {
            max_age
                .parse::<u64>()
                .map_err(|_| "max_age must be a number of seconds".to_owned())?;
        }
        let prompt = params.get("prompt")?;
        if prompt.is_some_and(|p| !matches!(p, "login" | "none" | "consent" | "select_account")) {
            return Err("prompt must be login, none, consent or select_account".into());
        }
        let acrs = match params.get("claims")? {
            None => Vec::new(),
            Some(claims) => requested_acrs(claims)?,
        };
        Ok(AuthorizeRequest {
            client_id: client_id.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            response_mode,
            scope: scope.to_owned(),
            state: state.to_owned(),
            nonce: nonce.to_owned(),
            code_challenge: code_challenge.to_owned(),
            prompt: prompt.map(str::to_owned),
            acrs,
        })
    }

    /// Sends `fields` back to the client as its `response_mode` says.
    fn respond(&self, fields: &[(&str, &str)]) -> Reply {
        match self.response_mode {
            ResponseMode::Query => redirect(&form::append_query(&self.redirect_uri, fields)),
            ResponseMode::FormPost => html(
                pages::form_post(&self.redirect_uri, fields),
                "default-src 'none'; script-src 'unsafe-inline'",
            ),
        }
    }
}

/// The ids in `{"id_token":{"acrs":{"essential":true,"value":"c1"}}}` (or `"values":[…]`).
fn requested_acrs(claims: &str) -> Result<Vec<String>, String> {
    let bad = || "claims must be a JSON object like {\"id_token\":{\"acrs\":{…}}}".to_owned();
    let claims: Value = serde_json::from_str(claims).map_err(|_| bad())?;
    let Some(request) = claims.as_object() else {
        return Err(bad());
    };
    let Some(acrs) = request.get("id_token").and_then(|t| t.get("acrs")) else {
        return Ok(Vec::new());
    };
    let mut ids: Vec<String> = Vec::new();
    if let Some(value) = acrs.get("value") {
        ids.push(value.as_str().ok_or_else(bad)?.to_owned());
    }
    if let Some(values) = acrs.get("values") {
        for value in values.as_array().ok_or_else(bad)? {
            ids.push(value.as_str().ok_or_else(bad)?.to_owned());
        }
    }
    Ok(ids)
}

/// GET: the sign-in page.
pub(super) fn authorize_page(shared: &Shared, params: &Params) -> Reply {
    let request = match AuthorizeRequest::parse(shared, params) {
        Ok(request) => request,
        Err(message) => return text(StatusCode::BAD_REQUEST, &message),
    };
    if request.prompt.as_deref() == Some("none") {
        // Nobody is ever signed in here, so a silent request cannot succeed.
        return request.respond(&[
            ("error", "login_required"),
            (
                "error_description",
                "AADSTS50058: A silent sign-in request was sent but no user is signed in.",
            ),
            ("state", &request.state),
        ]);
    }
    let action = format!("/{}/{AUTHORIZE_PATH}", shared.tenant_id);
    html(
        pages::sign_in(&pages::SignIn {
            action: &action,
            tenant_id: &shared.tenant_id,
            client_id: &request.client_id,
            params: &params.0,
            users: &shared.users,
            acrs: &request.acrs,
        }),
        "default-src 'none'; style-src 'unsafe-inline'",
    )
}

/// POST: the person's decision on the sign-in page.
pub(super) fn authorize_decision(shared: &Shared, params: &Params) -> Reply {
    decide(shared, params).unwrap_or_else(|message| text(StatusCode::BAD_REQUEST, &message))
}

/// The reply to the client, or why the form is a bad request.
fn decide(shared: &Shared, params: &Params) -> Result<Reply, String> {
    let request = AuthorizeRequest::parse(shared, params)?;
    match params.require("decision")? {
        "cancel" => {
            return Ok(request.respond(&[
                ("error", "access_denied"),
                (
                    "error_description",
                    "AADSTS50105: The user cancelled the sign-in.",
                ),
                ("state", &request.state),
            ]))
        }
        "approve" => {}
        _ => return Err("decision must be approve or cancel".into()),
    }
    let username = params.require("user")?;
    let user = shared
        .user(username)
        .ok_or_else(|| format!("there is no user {username}"))?;
    let mfa = match params.get("mfa")? {
        Some("yes") => true,
        Some("no") => false,
        _ => {
            return Err(
                "choose whether multifactor authentication was done (mfa=yes or mfa=no)".into(),
            )
        }
    };
    let now = unix_now();
    let code = random_token(32);
    let sid = guid();
    let session_state = guid();
    {
        let mut state = shared.lock();
        let auth_time = now.saturating_sub(state.auth_time_offset.as_secs());
        state
            .codes
            .retain(|_, grant| grant.issued_at + CODE_LIFETIME >= now);
        state.codes.insert(
            code.clone(),
            CodeGrant {
                client_id: request.client_id.clone(),
                redirect_uri: request.redirect_uri.clone(),
                code_challenge: request.code_challenge.clone(),
                nonce: request.nonce.clone(),
                scope: request.scope.clone(),
                username: user.username.clone(),
                mfa,
                auth_time,
                // Entra grants an authentication context only when its policy (here: MFA) is met.
                acrs: if mfa {
                    request.acrs.clone()
                } else {
                    Vec::new()
                },
                sid: sid.clone(),
                issued_at: now,
            },
        );
        state.last_sid.insert(user.username.clone(), sid);
    }
    Ok(request.respond(&[
        ("code", &code),
        ("state", &request.state),
        ("session_state", &session_state),
    ]))
}

// ---------------------------------------------------------------------------------------------
// Token

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
    let claims = id_token_claims(shared, &grant, user, now);
    let id_token = {
        let mut state = shared.lock();
        let forgery = state.forgeries.pop_front();
        let current = state
            .keys
            .first()
            .cloned()
            .ok_or_else(|| invalid_grant("no signing key"))?;
        drop(state);
        jwt::issue(claims, forgery, &current).map_err(|e| TokenError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: "server_error",
            description: e,
        })?
    };
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
    set("ipaddr", "127.0.0.1".into());
    set("sid", grant.sid.clone().into());
    set("uti", random_token(16).into());
    set("ver", "1.0".into());
    claims
}

// ---------------------------------------------------------------------------------------------
// Logout

/// GET: end-session. Goes back to `post_logout_redirect_uri` (with `state`) when given.
pub(super) fn logout(params: &Params) -> Reply {
    let target = match params.get("post_logout_redirect_uri") {
        Ok(target) => target,
        Err(message) => return text(StatusCode::BAD_REQUEST, &message),
    };
    match target {
        None => html(
            pages::signed_out(),
            "default-src 'none'; style-src 'unsafe-inline'",
        ),
        Some(uri) if is_http_url(uri) => match params.get("state") {
            Ok(Some(state)) => redirect(&form::append_query(uri, &[("state", state)])),
            Ok(None) => redirect(uri),
            Err(message) => text(StatusCode::BAD_REQUEST, &message),
        },
        Some(_) => text(
            StatusCode::BAD_REQUEST,
            "post_logout_redirect_uri must be an absolute http(s) URL",
        ),
    }
}
