//! The test provider on real sockets: what the gateway and its OpenID library read from it.

mod availability;
mod client_assertion;
mod discovery;
mod forgeries;
mod single_sign_on;
mod token;

use std::sync::OnceLock;

use http::StatusCode;
use rand::RngCore;
use rsa::{BigUint, Pkcs1v15Sign, Pss, RsaPrivateKey, RsaPublicKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::jwt::{self, b64};
use super::*;

const CLIENT: &str = "11111111-2222-4333-8444-555555555555";
const SECRET: &str = "s3cret~value:with+reserved&chars";
const CERT_CLIENT: &str = "66666666-7777-4888-8999-000000000000";
const CERT_DER: &[u8] = b"stand-in for the client certificate's DER";
/// `client_assertion_type` of a `private_key_jwt` client assertion.
const JWT_BEARER_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const REDIRECT: &str = "https://mail.contoso.com/_gateway/callback";

async fn start() -> TestProvider {
    let provider = TestProvider::start(ProviderOptions::default())
        .await
        .unwrap();
    provider.register_client(CLIENT, ClientCredential::Secret(SECRET.into()));
    provider
}

fn http() -> reqwest::Client {
    crate::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn random() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    b64(bytes)
}

fn now() -> u64 {
    unix_now()
}

/// One sign-in as the gateway would start it.
struct Login {
    url: String,
    verifier: String,
    state: String,
    nonce: String,
}

fn login(provider: &TestProvider, client_id: &str, extra: &[(&str, &str)]) -> Login {
    let verifier = random();
    let challenge = b64(Sha256::digest(verifier.as_bytes()));
    let state = random();
    let nonce = random();
    let mut params = vec![
        ("client_id", client_id),
        ("redirect_uri", REDIRECT),
        ("response_type", "code"),
        ("scope", "openid profile email"),
        ("state", &state),
        ("nonce", &nonce),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
    ];
    params.extend_from_slice(extra);
    let url = form::append_query(&provider.authorization_endpoint(), &params);
    Login {
        url,
        verifier,
        state,
        nonce,
    }
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// The fields the provider sends back to the redirect URI, by either response mode.
async fn callback_fields(response: reqwest::Response) -> Vec<(String, String)> {
    if response.status() == reqwest::StatusCode::FOUND {
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let (target, query) = location.split_once('?').unwrap();
        assert_eq!(target, REDIRECT);
        form::decode(query)
    } else {
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        let html = response.text().await.unwrap();
        let (action, fields) = parse_form_post(&html).unwrap();
        assert_eq!(action, REDIRECT);
        fields
    }
}

async fn sign_in(
    http: &reqwest::Client,
    login: &Login,
    user: &str,
    mfa: bool,
) -> Vec<(String, String)> {
    let (url, form) = sign_in_form(&login.url, user, mfa);
    callback_fields(http.post(url).form(&form).send().await.unwrap()).await
}

async fn code_for(http: &reqwest::Client, login: &Login, user: &str, mfa: bool) -> String {
    let fields = sign_in(http, login, user, mfa).await;
    assert_eq!(field(&fields, "state"), Some(login.state.as_str()));
    field(&fields, "code").unwrap().to_owned()
}

async fn post_token(
    http: &reqwest::Client,
    provider: &TestProvider,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> (reqwest::StatusCode, Value) {
    let mut request = http.post(provider.token_endpoint()).form(form);
    if let Some((user, password)) = basic {
        request = request.basic_auth(
            form::encode_component(user),
            Some(form::encode_component(password)),
        );
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (
        status,
        serde_json::from_str(&response.text().await.unwrap()).unwrap(),
    )
}

async fn redeem(
    http: &reqwest::Client,
    provider: &TestProvider,
    code: &str,
    verifier: &str,
) -> (reqwest::StatusCode, Value) {
    post_token(
        http,
        provider,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
        ],
        None,
    )
    .await
}

/// Signs alice (or `user`) in and returns the decoded ID token and its compact form.
async fn id_token(
    http: &reqwest::Client,
    provider: &TestProvider,
    user: &str,
    mfa: bool,
    extra: &[(&str, &str)],
) -> (jwt::Jwt, String, Login) {
    let login = login(provider, CLIENT, extra);
    let code = code_for(http, &login, user, mfa).await;
    let (status, body) = redeem(http, provider, &code, &login.verifier).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let compact = body["id_token"].as_str().unwrap().to_owned();
    (jwt::decode(&compact).unwrap(), compact, login)
}

/// The body of a GET that must be answered.
async fn get_text(http: &reqwest::Client, url: impl reqwest::IntoUrl) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

async fn jwks(http: &reqwest::Client, provider: &TestProvider) -> Vec<Value> {
    let text = get_text(http, provider.jwks_uri()).await;
    let keys: Value = serde_json::from_str(&text).unwrap();
    keys["keys"].as_array().unwrap().clone()
}

/// Verifies an RS256 token the way a relying party does: key by `kid` from the JWKS.
fn verify_with_jwks(token: &jwt::Jwt, keys: &[Value]) -> Result<(), String> {
    let kid = token.header["kid"].as_str().ok_or("no kid")?;
    let jwk = keys
        .iter()
        .find(|key| key["kid"] == kid)
        .ok_or("kid not in the JWKS")?;
    let number =
        |name: &str| BigUint::from_bytes_be(&jwt::unb64(jwk[name].as_str().unwrap()).unwrap());
    let key = RsaPublicKey::new(number("n"), number("e")).map_err(|e| e.to_string())?;
    key.verify(
        Pkcs1v15Sign::new::<Sha256>(),
        &Sha256::digest(token.signing_input.as_bytes()),
        &token.signature,
    )
    .map_err(|e| e.to_string())
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}
