//! Exchange 2019 Outlook on the web and ECP with hybrid modern authentication (HMA), for the
//! tests: Exchange signs browsers in at Entra itself, as the "Office 365 Exchange Online"
//! application, a second client of the same test provider the gateway uses.
//!
//! A browser without the stand-in's cookie is sent to the provider's authorization endpoint with
//! `response_type=code id_token`, `response_mode=form_post`, a `nonce` and a `state` kept in
//! the stand-in's own cookie, and `redirect_uri` = the virtual directory's root (`/owa/`, as
//! Exchange registers its reply URLs). The POST that comes back must carry an ID token that
//! passes what Exchange checks: RS256 signature by a key of the provider's JWKS (fetched, by
//! `kid`), `iss` the provider's issuer, `aud` the Exchange Online application id, `exp` in the
//! future, `nonce` and `state` those of this browser's cookie. Then the stand-in sets its
//! session cookie, sends the browser on to the virtual directory, and shows "Mailbox of <upn>".
//! Every verdict is recorded with its reason. The checks use nothing of the gateway's code:
//! `rsa`, `sha2`, `base64` and `serde_json`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::{COOKIE, HOST, LOCATION, SET_COOKIE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use rand::RngCore;

use super::fake_exchange::{full, FakeExchange, Recorded, TestBody};

/// The application id of "Office 365 Exchange Online", the client Exchange signs in as.
pub const EXCHANGE_ONLINE_APP_ID: &str = "00000002-0000-0ff1-ce00-000000000000";
/// The cookie of Exchange's pending sign-in (nonce and state), `SameSite=None` as ASP.NET's
/// OpenID Connect middleware sets it.
pub const HMA_PENDING_COOKIE: &str = "TestHmaPending";
/// The stand-in's session cookie once a token was accepted.
pub const HMA_AUTH_COOKIE: &str = "TestHmaAuth";

/// What one posted sign-in came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HmaVerdict {
    Accepted { upn: String },
    Refused(String),
}

struct State {
    issuer: String,
    authorization_endpoint: String,
    jwks_uri: String,
    /// Pending sign-ins: cookie value → (nonce, state).
    pending: Mutex<HashMap<String, (String, String)>>,
    /// Sessions: cookie value → upn.
    sessions: Mutex<HashMap<String, String>>,
    verdicts: Mutex<Vec<HmaVerdict>>,
}

/// The stand-in, listening on 127.0.0.1 (plain HTTP), behind the gateway.
pub struct HmaExchange {
    pub server: FakeExchange,
    state: Arc<State>,
}

impl HmaExchange {
    /// Exchange in HMA mode against the provider with `issuer` (its endpoints are the test
    /// provider's: `oauth2/authorize` and `discovery/keys` under the issuer).
    pub async fn start(issuer: &str, authorization_endpoint: &str, jwks_uri: &str) -> HmaExchange {
        super::logging::init();
        let state = Arc::new(State {
            issuer: issuer.to_owned(),
            authorization_endpoint: authorization_endpoint.to_owned(),
            jwks_uri: jwks_uri.to_owned(),
            pending: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            verdicts: Mutex::new(Vec::new()),
        });
        let handler_state = state.clone();
        let server = FakeExchange::builder("exchange-hma")
            .handler(move |req| handle(handler_state.clone(), req))
            .start()
            .await;
        HmaExchange { server, state }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Every sign-in verdict, oldest first.
    pub fn verdicts(&self) -> Vec<HmaVerdict> {
        self.state.verdicts.lock().unwrap().clone()
    }

    /// Every request, as the underlying fake Exchange recorded it.
    pub fn requests(&self) -> Vec<Recorded> {
        self.server.user_requests()
    }

    /// The POSTs to a virtual directory's root (Entra's answers, relayed or not).
    pub fn sign_in_posts(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == Method::POST)
            .collect()
    }
}

fn vdir_of(path: &str) -> Option<&'static str> {
    let lower = path.to_ascii_lowercase();
    ["/owa", "/ecp"]
        .into_iter()
        .find(|v| lower == *v || lower.starts_with(&format!("{v}/")))
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<TestBody> {
    let path = req.uri().path().to_owned();
    let Some(vdir) = vdir_of(&path) else {
        return respond(StatusCode::NOT_FOUND, "not an Exchange virtual directory");
    };
    let host = header(req.headers(), HOST.as_str()).unwrap_or_default();
    // The gateway says how the browser reached it; Exchange's reply URL is built from that.
    let scheme = header(req.headers(), "x-forwarded-proto").unwrap_or_else(|| "https".into());
    let reply_url = format!("{scheme}://{host}{vdir}/");

    if req.method() == Method::POST && path.trim_end_matches('/').eq_ignore_ascii_case(vdir) {
        let headers = req.headers().clone();
        let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return respond(StatusCode::BAD_REQUEST, "body unreadable or too large"),
        };
        let form: HashMap<String, String> =
            url::form_urlencoded::parse(&body).into_owned().collect();
        let verdict = check_sign_in(&state, &headers, &form).await;
        state.verdicts.lock().unwrap().push(verdict.clone());
        return match verdict {
            HmaVerdict::Accepted { upn } => {
                let session = random();
                state.sessions.lock().unwrap().insert(session.clone(), upn);
                let mut response = redirect(&format!("{vdir}/"));
                let headers = response.headers_mut();
                headers.append(
                    SET_COOKIE,
                    format!("{HMA_AUTH_COOKIE}={session}; Path=/; Secure; HttpOnly")
                        .parse()
                        .unwrap(),
                );
                headers.append(
                    SET_COOKIE,
                    format!("{HMA_PENDING_COOKIE}=; Path=/; Max-Age=0")
                        .parse()
                        .unwrap(),
                );
                response
            }
            HmaVerdict::Refused(reason) => respond(
                StatusCode::UNAUTHORIZED,
                &format!("Exchange refused the sign-in: {reason}"),
            ),
        };
    }

    if let Some(session) = cookie(req.headers(), HMA_AUTH_COOKIE) {
        if let Some(upn) = state.sessions.lock().unwrap().get(&session) {
            let body = format!(
                "<!DOCTYPE html><html><body><h1>Mailbox of {}</h1><p>{}</p></body></html>",
                escape(upn),
                escape(&path)
            );
            return Response::builder()
                .header("content-type", "text/html; charset=utf-8")
                .body(full(body))
                .unwrap();
        }
    }

    // Not signed in to Exchange: off to Entra, as the Exchange Online application.
    let nonce = random();
    let sign_in_state = random();
    let pending = random();
    state
        .pending
        .lock()
        .unwrap()
        .insert(pending.clone(), (nonce.clone(), sign_in_state.clone()));
    let location = format!(
        "{}?{}",
        state.authorization_endpoint,
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", EXCHANGE_ONLINE_APP_ID)
            .append_pair("redirect_uri", &reply_url)
            .append_pair("resource", EXCHANGE_ONLINE_APP_ID)
            .append_pair("response_mode", "form_post")
            .append_pair("response_type", "code id_token")
            .append_pair("scope", "openid")
            .append_pair("nonce", &nonce)
            .append_pair("state", &sign_in_state)
            .finish()
    );
    let mut response = redirect(&location);
    response.headers_mut().append(
        SET_COOKIE,
        format!("{HMA_PENDING_COOKIE}={pending}; Path=/; Secure; HttpOnly; SameSite=None")
            .parse()
            .unwrap(),
    );
    response
}

/// What Exchange checks of Entra's answer.
async fn check_sign_in(
    state: &State,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> HmaVerdict {
    let refuse = |why: &str| HmaVerdict::Refused(why.to_owned());
    if let Some(error) = form.get("error") {
        return refuse(&format!("Entra answered {error}"));
    }
    let Some(pending) = cookie(headers, HMA_PENDING_COOKIE) else {
        return refuse("no pending sign-in cookie");
    };
    let Some((nonce, expected_state)) = state.pending.lock().unwrap().remove(&pending) else {
        return refuse("unknown pending sign-in");
    };
    if form.get("state") != Some(&expected_state) {
        return refuse("state mismatch");
    }
    let (Some(id_token), Some(_code)) = (form.get("id_token"), form.get("code")) else {
        return refuse("no id_token and code");
    };
    let claims = match verify_rs256(id_token, &state.jwks_uri).await {
        Ok(claims) => claims,
        Err(why) => return refuse(&why),
    };
    let text = |name: &str| claims.get(name).and_then(|v| v.as_str()).unwrap_or("");
    if text("iss") != state.issuer {
        return refuse("wrong issuer");
    }
    if text("aud") != EXCHANGE_ONLINE_APP_ID {
        return refuse("wrong audience");
    }
    if text("nonce") != nonce {
        return refuse("nonce mismatch");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if claims.get("exp").and_then(|v| v.as_u64()).unwrap_or(0) <= now {
        return refuse("expired");
    }
    match claims.get("upn").and_then(|v| v.as_str()) {
        Some(upn) => HmaVerdict::Accepted {
            upn: upn.to_owned(),
        },
        None => refuse("no upn"),
    }
}

/// The claims of a JWT whose RS256 signature verifies with the JWKS key named by its `kid`.
async fn verify_rs256(
    token: &str,
    jwks_uri: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    use rsa::{BigUint, Pkcs1v15Sign, RsaPublicKey};
    use sha2::{Digest, Sha256};
    let parts: Vec<&str> = token.split('.').collect();
    let [header, payload, signature] = parts[..] else {
        return Err("not a JWS".into());
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| "bad base64url");
    let header: serde_json::Value =
        serde_json::from_slice(&decode(header)?).map_err(|_| "bad header")?;
    if header["alg"] != "RS256" {
        return Err("alg is not RS256".into());
    }
    let kid = header["kid"].as_str().ok_or("no kid")?;
    let jwks = super::clients::plain_client()
        .get(jwks_uri)
        .send()
        .await
        .map_err(|e| format!("JWKS: {e}"))?
        .bytes()
        .await
        .map_err(|e| format!("JWKS: {e}"))?;
    let jwks: serde_json::Value = serde_json::from_slice(&jwks).map_err(|_| "JWKS: not JSON")?;
    let key = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid))
        .ok_or("unknown kid")?;
    let number = |name: &str| -> Result<BigUint, String> {
        let text = key[name].as_str().ok_or(format!("JWK without {name}"))?;
        Ok(BigUint::from_bytes_be(&decode(text)?))
    };
    let public = RsaPublicKey::new(number("n")?, number("e")?).map_err(|e| e.to_string())?;
    let digest = Sha256::digest(format!("{}.{}", parts[0], parts[1]).as_bytes());
    public
        .verify(Pkcs1v15Sign::new::<Sha256>(), &digest, &decode(signature)?)
        .map_err(|_| "bad signature".to_owned())?;
    let claims: serde_json::Value =
        serde_json::from_slice(&decode(payload)?).map_err(|_| "bad payload")?;
    claims
        .as_object()
        .cloned()
        .ok_or_else(|| "payload is not an object".into())
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_owned())
}

fn random() -> String {
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn redirect(location: &str) -> Response<TestBody> {
    Response::builder()
        .status(StatusCode::FOUND)
        .header(LOCATION, location)
        .body(full(""))
        .unwrap()
}

fn respond(status: StatusCode, text: &str) -> Response<TestBody> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(full(text.to_owned()))
        .unwrap()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
