//! The provider's endpoints under `/<tid>/` other than the token endpoint ([`super::token`]):
//! discovery, keys, authorize (the sign-in page and its decision), logout; the replies they
//! share; and the dispatch of a request to its endpoint.

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use rand::RngCore;
use serde_json::{json, Value};

use super::form::{self, Params};
use super::jwt::{self, b64};
use super::pages;
use super::{
    unix_now, ClientAuthMethod, ProviderEndpoint, Reply, Shared, TestUser, AUTHORIZE_PATH,
    DISCOVERY_PATH, KEYS_PATH, LOGOUT_PATH, MAX_BODY, SSO_COOKIE, TOKEN_PATH,
};

/// An authorization code is good for this long, and once.
pub(super) const CODE_LIFETIME: u64 = 60;

/// What an issued authorization code stands for.
pub(super) struct CodeGrant {
    pub(super) client_id: String,
    pub(super) redirect_uri: String,
    pub(super) code_challenge: String,
    pub(super) nonce: String,
    pub(super) scope: String,
    pub(super) username: String,
    pub(super) mfa: bool,
    pub(super) auth_time: u64,
    /// Granted authentication contexts (only with MFA).
    pub(super) acrs: Vec<String>,
    pub(super) sid: String,
    pub(super) issued_at: u64,
}

/// A browser's session at the provider (with single sign-on): who signed in, and how.
pub(super) struct BrowserSession {
    username: String,
    mfa: bool,
    auth_time: u64,
    /// Authentication contexts that sign-in satisfied.
    acrs: Vec<String>,
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

pub(super) fn json_reply(status: StatusCode, value: &Value) -> Reply {
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

pub(super) fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    b64(buf)
}

pub(super) fn guid() -> String {
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
            "response_types_supported": ["code", "code id_token"],
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

#[derive(PartialEq, Eq)]
enum ResponseType {
    /// `code`: the code only, redeemed at the token endpoint with PKCE.
    Code,
    /// `code id_token`: the hybrid flow of Exchange's own sign-in — the ID token comes with
    /// the code.
    CodeIdToken,
}

/// A validated authorization request.
struct AuthorizeRequest {
    client_id: String,
    redirect_uri: String,
    response_type: ResponseType,
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
        let response_type = match params.require("response_type")? {
            "code" => ResponseType::Code,
            "code id_token" | "id_token code" => ResponseType::CodeIdToken,
            _ => return Err("response_type must be code or code id_token".into()),
        };
        let response_mode = match params.get("response_mode")? {
            None | Some("query") => ResponseMode::Query,
            Some("form_post") => ResponseMode::FormPost,
            Some(_) => return Err("response_mode must be query or form_post".into()),
        };
        let scope = params.require("scope")?;
        if !scope.split(' ').any(|s| s == "openid") {
            return Err("scope must include openid".into());
        }
        // PKCE is required for the code flow; the hybrid flow's ID token is bound by `nonce`
        // and `c_hash` instead (a code issued without a challenge cannot be redeemed here).
        let code_challenge = match (&response_type, params.get("code_challenge")?) {
            (ResponseType::CodeIdToken, None) => "",
            _ => {
                if params.require("code_challenge_method")? != "S256" {
                    return Err("code_challenge_method must be S256".into());
                }
                let challenge = params.require("code_challenge")?;
                if jwt::unb64(challenge).map(|d| d.len()) != Ok(32) {
                    return Err("code_challenge must be a base64url SHA-256 digest".into());
                }
                challenge
            }
        };
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
            response_type,
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

/// GET: the sign-in page, or — for a browser signed in here already (single sign-on) — the
/// answer at once.
pub(super) fn authorize_page(shared: &Shared, params: &Params, headers: &HeaderMap) -> Reply {
    let request = match AuthorizeRequest::parse(shared, params) {
        Ok(request) => request,
        Err(message) => return text(StatusCode::BAD_REQUEST, &message),
    };
    if let Some((user, mfa, auth_time)) = signed_in_browser(shared, &request, headers) {
        return grant(shared, &request, &user, mfa, Some(auth_time))
            .unwrap_or_else(|message| text(StatusCode::BAD_REQUEST, &message));
    }
    if request.prompt.as_deref() == Some("none") {
        // Nobody is signed in in this browser, so a silent request cannot succeed.
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
    let user = user.clone();
    grant(shared, &request, &user, mfa, None)
}

/// The person this browser's session at the provider signed in, when single sign-on is on and
/// the request may be answered from it: no `prompt=login`, and every authentication context
/// asked for satisfied by that sign-in.
fn signed_in_browser(
    shared: &Shared,
    request: &AuthorizeRequest,
    headers: &HeaderMap,
) -> Option<(TestUser, bool, u64)> {
    if !shared.single_sign_on || request.prompt.as_deref() == Some("login") {
        return None;
    }
    let id = browser_session_id(headers)?;
    let state = shared.lock();
    let session = state.browser_sessions.get(&id)?;
    if !request.acrs.iter().all(|id| session.acrs.contains(id)) {
        return None;
    }
    let user = shared.user(&session.username)?.clone();
    Some((user, session.mfa, session.auth_time))
}

/// The value of this browser's [`SSO_COOKIE`].
fn browser_session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SSO_COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// Issues the code (and, in the hybrid flow, the ID token) of a sign-in and sends it to the
/// client; `auth_time` is the browser session's when answered from it. With single sign-on, a
/// new sign-in starts a browser session.
fn grant(
    shared: &Shared,
    request: &AuthorizeRequest,
    user: &TestUser,
    mfa: bool,
    auth_time: Option<u64>,
) -> Result<Reply, String> {
    let now = unix_now();
    let code = random_token(32);
    let sid = guid();
    let session_state = guid();
    let granted = {
        let mut state = shared.lock();
        #[cfg(feature = "test-kit")]
        let auth_time = auth_time.unwrap_or_else(|| state.test_kit.auth_time(now));
        #[cfg(not(feature = "test-kit"))]
        let auth_time = auth_time.unwrap_or(now);
        state
            .codes
            .retain(|_, grant| grant.issued_at + CODE_LIFETIME >= now);
        let grant = CodeGrant {
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
        };
        let id_token = match request.response_type {
            ResponseType::Code => None,
            ResponseType::CodeIdToken => Some((grant.nonce.clone(), grant.acrs.clone())),
        };
        state.codes.insert(code.clone(), grant);
        #[cfg(feature = "test-kit")]
        state.test_kit.signed_in(&user.username, &sid);
        (auth_time, id_token)
    };
    let (granted_auth_time, hybrid) = granted;
    let id_token = match hybrid {
        None => None,
        Some((nonce, acrs)) => {
            let grant = CodeGrant {
                client_id: request.client_id.clone(),
                redirect_uri: request.redirect_uri.clone(),
                code_challenge: String::new(),
                nonce,
                scope: request.scope.clone(),
                username: user.username.clone(),
                mfa,
                auth_time: granted_auth_time,
                acrs,
                sid: sid.clone(),
                issued_at: now,
            };
            Some(super::token::signed_id_token(
                shared,
                &grant,
                user,
                now,
                Some(&code),
            )?)
        }
    };
    let mut fields: Vec<(&str, &str)> = vec![("code", &code)];
    if let Some(id_token) = &id_token {
        fields.push(("id_token", id_token));
    }
    fields.push(("state", &request.state));
    fields.push(("session_state", &session_state));
    let mut reply = request.respond(&fields);
    // A sign-in on the page starts a browser session; one answered from it does not renew it.
    if shared.single_sign_on && auth_time.is_none() {
        let id = random_token(32);
        shared.lock().browser_sessions.insert(
            id.clone(),
            BrowserSession {
                username: user.username.clone(),
                mfa,
                auth_time: granted_auth_time,
                acrs: if mfa {
                    request.acrs.clone()
                } else {
                    Vec::new()
                },
            },
        );
        let cookie = format!(
            "{SSO_COOKIE}={id}; Path=/{}/; HttpOnly; SameSite=Lax",
            shared.tenant_id
        );
        if let Ok(cookie) = HeaderValue::from_str(&cookie) {
            reply.headers_mut().append(http::header::SET_COOKIE, cookie);
        }
    }
    Ok(reply)
}

// ---------------------------------------------------------------------------------------------
// Logout

/// GET: end-session. Ends this browser's session here (single sign-on) and goes back to
/// `post_logout_redirect_uri` (with `state`) when given.
pub(super) fn logout(shared: &Shared, params: &Params, headers: &HeaderMap) -> Reply {
    let mut reply = logout_reply(params);
    if shared.single_sign_on {
        if let Some(id) = browser_session_id(headers) {
            shared.lock().browser_sessions.remove(&id);
        }
        let clear = format!(
            "{SSO_COOKIE}=; Path=/{}/; HttpOnly; SameSite=Lax; Max-Age=0",
            shared.tenant_id
        );
        if let Ok(clear) = HeaderValue::from_str(&clear) {
            reply.headers_mut().append(http::header::SET_COOKIE, clear);
        }
    }
    reply
}

fn logout_reply(params: &Params) -> Reply {
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

// ---------------------------------------------------------------------------------------------
// Dispatch

fn endpoint_of(tenant_id: &str, path: &str) -> ProviderEndpoint {
    let rest = path
        .strip_prefix('/')
        .and_then(|p| p.strip_prefix(tenant_id))
        .and_then(|p| p.strip_prefix('/'));
    match rest {
        Some(DISCOVERY_PATH) => ProviderEndpoint::Discovery,
        Some(KEYS_PATH) => ProviderEndpoint::Keys,
        Some(AUTHORIZE_PATH) => ProviderEndpoint::Authorize,
        Some(TOKEN_PATH) => ProviderEndpoint::Token,
        Some(LOGOUT_PATH) => ProviderEndpoint::Logout,
        _ => ProviderEndpoint::Other(path.to_owned()),
    }
}

pub(super) async fn handle(shared: &Shared, request: Request<Incoming>) -> Reply {
    let (parts, body) = request.into_parts();
    let endpoint = endpoint_of(&shared.tenant_id, parts.uri.path());
    let mut params = form::decode(parts.uri.query().unwrap_or(""));
    let mut body_error = None;
    if parts.method == Method::POST {
        let is_form = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.to_ascii_lowercase()
                    .starts_with("application/x-www-form-urlencoded")
            });
        match Limited::new(body, MAX_BODY).collect().await {
            Ok(_) if !is_form => {
                body_error = Some("the body must be application/x-www-form-urlencoded")
            }
            // On a POST only the form counts; a query string there is ignored.
            Ok(collected) => params = form::decode(&String::from_utf8_lossy(&collected.to_bytes())),
            Err(_) => body_error = Some("the body is too large or was cut short"),
        }
    }
    let params = Params(params);
    #[cfg(feature = "test-kit")]
    let reply = super::test_kit::answer_recorded(
        shared,
        endpoint,
        parts.method,
        &parts.headers,
        params,
        body_error,
    );
    #[cfg(not(feature = "test-kit"))]
    let (reply, _) = answer(
        shared,
        &endpoint,
        &parts.method,
        &parts.headers,
        &params,
        body_error,
    );
    reply
}

/// The reply of `endpoint` to a request, and the client authentication method it presented
/// (token endpoint only).
pub(super) fn answer(
    shared: &Shared,
    endpoint: &ProviderEndpoint,
    method: &Method,
    headers: &HeaderMap,
    params: &Params,
    body_error: Option<&'static str>,
) -> (Reply, Option<ClientAuthMethod>) {
    if let Some(message) = body_error {
        let reply = match endpoint {
            ProviderEndpoint::Token => {
                oauth_error(StatusCode::BAD_REQUEST, "invalid_request", message, false)
            }
            _ => text(StatusCode::BAD_REQUEST, message),
        };
        return (reply, None);
    }
    let reply = match (endpoint, method) {
        (ProviderEndpoint::Discovery, &Method::GET) => discovery(shared),
        (ProviderEndpoint::Keys, &Method::GET) => keys(shared),
        (ProviderEndpoint::Authorize, &Method::GET) => authorize_page(shared, params, headers),
        (ProviderEndpoint::Authorize, &Method::POST) => authorize_decision(shared, params),
        (ProviderEndpoint::Token, &Method::POST) => {
            return super::token::token(shared, headers, params)
        }
        (ProviderEndpoint::Logout, &Method::GET) => logout(shared, params, headers),
        (ProviderEndpoint::Other(_), _) => text(StatusCode::NOT_FOUND, "Not found."),
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed."),
    };
    (reply, None)
}
