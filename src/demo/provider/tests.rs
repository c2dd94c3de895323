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

async fn jwks(http: &reqwest::Client, provider: &TestProvider) -> Vec<Value> {
    let text = http
        .get(provider.jwks_uri())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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

// ---------------------------------------------------------------------------------------------
// Discovery and keys

#[tokio::test]
async fn discovery_document_names_the_v1_endpoints_under_the_tenant() {
    let provider = start().await;
    let text = http()
        .get(provider.discovery_url())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let port = provider.addr().port();
    let base = format!("http://127.0.0.1:{port}/{DEFAULT_TENANT_ID}/");
    assert_eq!(provider.issuer(), base);
    assert_eq!(
        provider.discovery_url(),
        format!("{base}.well-known/openid-configuration")
    );
    assert_eq!(doc["issuer"], base);
    assert_eq!(
        doc["authorization_endpoint"],
        format!("{base}oauth2/authorize")
    );
    assert_eq!(doc["token_endpoint"], format!("{base}oauth2/token"));
    assert_eq!(doc["jwks_uri"], format!("{base}discovery/keys"));
    assert_eq!(doc["end_session_endpoint"], format!("{base}oauth2/logout"));
    assert_eq!(doc["response_types_supported"], json!(["code"]));
    assert_eq!(
        doc["response_modes_supported"],
        json!(["query", "form_post"])
    );
    assert_eq!(doc["subject_types_supported"], json!(["pairwise"]));
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        json!(["RS256"])
    );
    assert_eq!(
        doc["token_endpoint_auth_methods_supported"],
        json!([
            "client_secret_post",
            "client_secret_basic",
            "private_key_jwt"
        ])
    );
    assert_eq!(doc["frontchannel_logout_supported"], true);
    for claim in [
        "amr",
        "acrs",
        "tid",
        "oid",
        "upn",
        "onprem_sid",
        "groups",
        "sid",
    ] {
        assert!(
            strings(&doc["claims_supported"]).contains(&claim),
            "{claim}"
        );
    }
    let calls = provider.calls_to(ProviderEndpoint::Discovery);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].status, StatusCode::OK);
}

#[tokio::test]
async fn issued_id_token_verifies_with_the_published_key_and_has_entra_v1_claims() {
    let provider = start().await;
    let http = http();
    let (token, _, login) = id_token(&http, &provider, "alice", true, &[]).await;
    let keys = jwks(&http, &provider).await;
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kty"], "RSA");
    assert_eq!(keys[0]["use"], "sig");
    assert_eq!(keys[0]["alg"], "RS256");
    assert_eq!(keys[0]["kid"], provider.current_kid());
    verify_with_jwks(&token, &keys).unwrap();

    assert_eq!(token.header["alg"], "RS256");
    assert_eq!(token.header["typ"], "JWT");
    assert_eq!(token.header["kid"], provider.current_kid());
    let claims = &token.claims;
    let alice = TestUser::alice();
    assert_eq!(claims["aud"], CLIENT);
    assert_eq!(claims["iss"], provider.issuer());
    assert_eq!(claims["tid"], DEFAULT_TENANT_ID);
    assert_eq!(claims["oid"], alice.oid);
    assert_eq!(claims["upn"], "alice@contoso.com");
    assert_eq!(claims["unique_name"], "alice@contoso.com");
    assert_eq!(claims["name"], alice.name);
    assert_eq!(claims["onprem_sid"], alice.onprem_sid.clone().unwrap());
    assert_eq!(
        claims["groups"],
        json!([GROUP_MAIL_USERS, GROUP_EXCHANGE_ADMINS])
    );
    assert_eq!(claims["amr"], json!(["pwd", "mfa"]));
    assert_eq!(claims["nonce"], login.nonce);
    assert_eq!(claims["ver"], "1.0");
    assert_eq!(claims["sid"], provider.last_sid("alice").unwrap());
    assert_eq!(claims["sub"].as_str().unwrap().len(), 43);
    assert!(claims.get("acrs").is_none());
    let iat = claims["iat"].as_u64().unwrap();
    assert!(iat.abs_diff(now()) < 10);
    assert_eq!(claims["nbf"].as_u64().unwrap(), iat);
    assert_eq!(claims["exp"].as_u64().unwrap(), iat + 3600);
    assert!(claims["auth_time"].as_u64().unwrap().abs_diff(iat) < 10);
}

#[tokio::test]
async fn bob_has_no_groups_claim_and_each_sign_in_gets_a_new_sid() {
    let provider = start().await;
    let http = http();
    let (first, _, _) = id_token(&http, &provider, "bob", false, &[]).await;
    assert!(first.claims.get("groups").is_none());
    assert_eq!(first.claims["amr"], json!(["pwd"]));
    let (second, _, _) = id_token(&http, &provider, "bob", false, &[]).await;
    assert_ne!(first.claims["sid"], second.claims["sid"]);
    assert_eq!(second.claims["sid"], provider.last_sid("bob").unwrap());
    assert_eq!(provider.last_sid("alice"), None);
}

#[tokio::test]
async fn more_than_200_groups_become_the_overage_marker() {
    let provider = start().await;
    let (token, _, _) = id_token(&http(), &provider, "carol", true, &[]).await;
    assert!(token.claims.get("groups").is_none());
    assert_eq!(token.claims["_claim_names"], json!({ "groups": "src1" }));
    assert!(token.claims["_claim_sources"]["src1"]["endpoint"]
        .as_str()
        .unwrap()
        .contains("/getMemberObjects"));
}

#[tokio::test]
async fn acrs_is_granted_only_to_a_sign_in_with_mfa() {
    let provider = start().await;
    let http = http();
    let claims = r#"{"id_token":{"acrs":{"essential":true,"value":"c1"}}}"#;
    let page = http
        .get(login(&provider, CLIENT, &[("claims", claims)]).url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("authentication context <b>c1</b>"));

    let (with_mfa, _, _) = id_token(&http, &provider, "alice", true, &[("claims", claims)]).await;
    assert_eq!(with_mfa.claims["acrs"], json!(["c1"]));
    let (without, _, _) = id_token(&http, &provider, "alice", false, &[("claims", claims)]).await;
    assert!(without.claims.get("acrs").is_none());
    assert_eq!(without.claims["amr"], json!(["pwd"]));
}

#[tokio::test]
async fn auth_time_offset_backdates_auth_time_but_not_the_token() {
    let provider = start().await;
    provider.set_auth_time_offset(Duration::from_secs(7200));
    let (token, _, _) = id_token(&http(), &provider, "alice", true, &[]).await;
    let iat = token.claims["iat"].as_u64().unwrap();
    let auth_time = token.claims["auth_time"].as_u64().unwrap();
    assert!((iat - auth_time).abs_diff(7200) < 5);
    assert!(iat.abs_diff(now()) < 10);
}

// ---------------------------------------------------------------------------------------------
// Authorization

#[tokio::test]
async fn sign_in_page_offers_the_users_and_the_mfa_choice() {
    let provider = start().await;
    let login = login(&provider, CLIENT, &[("response_mode", "form_post")]);
    let response = http().get(&login.url).send().await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let page = response.text().await.unwrap();
    for text in [
        "Password only",
        "Password and multifactor authentication (MFA completed)",
        ">Sign in</button>",
        ">Cancel</button>",
        "alice@contoso.com",
        "name=\"decision\" value=\"approve\"",
        "name=\"decision\" value=\"cancel\"",
        "name=\"response_mode\" value=\"form_post\"",
        &format!("name=\"state\" value=\"{}\"", login.state),
        &format!("action=\"/{DEFAULT_TENANT_ID}/oauth2/authorize\""),
    ] {
        assert!(page.contains(text), "{text}");
    }
    // Nothing loaded from elsewhere: the demo works offline.
    assert!(!page.contains(" src=") && !page.contains("<link") && !page.contains("url("));
}

#[tokio::test]
async fn form_post_page_auto_submits_code_and_state_to_the_redirect_uri() {
    let provider = start().await;
    let http = http();
    let login = login(&provider, CLIENT, &[("response_mode", "form_post")]);
    let (url, form) = sign_in_form(&login.url, "alice", true);
    let response = http.post(url).form(&form).send().await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let html = response.text().await.unwrap();
    assert!(html.contains(&format!(
        "method=\"post\" name=\"hiddenform\" action=\"{REDIRECT}\""
    )));
    assert!(html.contains("<script>document.forms[0].submit();</script>"));
    let (action, fields) = parse_form_post(&html).unwrap();
    assert_eq!(action, REDIRECT);
    assert_eq!(field(&fields, "state"), Some(login.state.as_str()));
    let code = field(&fields, "code").unwrap();
    assert!(html.contains(&format!("name=\"code\" value=\"{code}\"")));
    let (status, _) = redeem(&http, &provider, code, &login.verifier).await;
    assert_eq!(status, reqwest::StatusCode::OK);
}

#[tokio::test]
async fn cancel_returns_access_denied_with_the_state() {
    let provider = start().await;
    let login = login(&provider, CLIENT, &[]);
    let (url, mut form) = sign_in_form(&login.url, "alice", false);
    for (name, value) in &mut form {
        if name == "decision" {
            *value = "cancel".into();
        }
    }
    let fields = callback_fields(http().post(url).form(&form).send().await.unwrap()).await;
    assert_eq!(field(&fields, "error"), Some("access_denied"));
    assert!(field(&fields, "error_description").is_some());
    assert_eq!(field(&fields, "state"), Some(login.state.as_str()));
    assert_eq!(field(&fields, "code"), None);
}

#[tokio::test]
async fn prompt_none_returns_login_required() {
    let provider = start().await;
    let login = login(&provider, CLIENT, &[("prompt", "none")]);
    let fields = callback_fields(http().get(&login.url).send().await.unwrap()).await;
    assert_eq!(field(&fields, "error"), Some("login_required"));
    assert_eq!(field(&fields, "state"), Some(login.state.as_str()));
}

#[tokio::test]
async fn authorize_refuses_requests_missing_pkce_state_nonce_or_a_known_client() {
    let provider = start().await;
    let http = http();
    let good = login(&provider, CLIENT, &[]);
    let (_, params) = good.url.split_once('?').unwrap();
    let params = form::decode(params);
    for (dropped, replaced) in [
        ("code_challenge", None),
        ("code_challenge_method", Some("plain")),
        ("state", None),
        ("nonce", None),
        ("redirect_uri", None),
        ("response_type", Some("token")),
        ("client_id", Some("unknown-client")),
        ("response_mode", Some("fragment")),
        ("claims", Some("{not json")),
        ("scope", Some("profile")),
    ] {
        let mut changed: Vec<(String, String)> = params
            .iter()
            .filter(|(k, _)| k != dropped)
            .cloned()
            .collect();
        if let Some(value) = replaced {
            changed.push((dropped.into(), value.into()));
        }
        let url = form::append_query(&provider.authorization_endpoint(), &changed);
        let response = http.get(&url).send().await.unwrap();
        assert_eq!(
            response.status(),
            reqwest::StatusCode::BAD_REQUEST,
            "{dropped}"
        );
        let (post_url, mut form) = sign_in_form(&url, "alice", true);
        form.retain(|(k, _)| k != "mfa");
        let response = http.post(post_url).form(&form).send().await.unwrap();
        assert_eq!(
            response.status(),
            reqwest::StatusCode::BAD_REQUEST,
            "{dropped}"
        );
    }
    // A sign-in without the MFA choice, or for nobody, is refused too.
    for (name, value) in [("mfa", "maybe"), ("user", "mallory"), ("decision", "")] {
        let (post_url, mut form) = sign_in_form(&good.url, "alice", true);
        form.retain(|(k, _)| k != name);
        form.push((name.into(), value.into()));
        let response = http.post(post_url).form(&form).send().await.unwrap();
        assert_eq!(
            response.status(),
            reqwest::StatusCode::BAD_REQUEST,
            "{name}"
        );
    }
    assert!(provider
        .calls_to(ProviderEndpoint::Authorize)
        .iter()
        .all(|call| call.status == StatusCode::BAD_REQUEST));
}

// ---------------------------------------------------------------------------------------------
// Token endpoint: codes and client secrets

#[tokio::test]
async fn authorization_code_is_single_use() {
    let provider = start().await;
    let http = http();
    let login = login(&provider, CLIENT, &[]);
    let code = code_for(&http, &login, "alice", true).await;
    let (status, _) = redeem(&http, &provider, &code, &login.verifier).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let (status, body) = redeem(&http, &provider, &code, &login.verifier).await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
}

#[tokio::test]
async fn authorization_code_expires_after_60_seconds() {
    let provider = start().await;
    let http = http();
    let login = login(&provider, CLIENT, &[]);
    let code = code_for(&http, &login, "alice", true).await;
    for grant in provider.shared.lock().codes.values_mut() {
        grant.issued_at -= 61;
    }
    let (status, body) = redeem(&http, &provider, &code, &login.verifier).await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("expired"));
}

#[tokio::test]
async fn authorization_code_needs_the_pkce_verifier_it_was_issued_for() {
    let provider = start().await;
    let http = http();
    let login = login(&provider, CLIENT, &[]);
    let code = code_for(&http, &login, "alice", true).await;
    let (status, body) = redeem(&http, &provider, &code, &random()).await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    // The failed attempt spent the code.
    let (status, _) = redeem(&http, &provider, &code, &login.verifier).await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn authorization_code_is_bound_to_its_redirect_uri() {
    let provider = start().await;
    let http = http();
    let login = login(&provider, CLIENT, &[]);
    let code = code_for(&http, &login, "alice", true).await;
    let (status, body) = post_token(
        &http,
        &provider,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "https://evil.example/_gateway/callback"),
            ("code_verifier", &login.verifier),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
        ],
        None,
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
}

#[tokio::test]
async fn client_secret_basic_is_accepted_and_a_wrong_secret_is_invalid_client() {
    let provider = start().await;
    let http = http();
    let login = login(&provider, CLIENT, &[]);
    let code = code_for(&http, &login, "alice", true).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", login.verifier.as_str()),
    ];
    let (status, body) = post_token(&http, &provider, &form, Some((CLIENT, "wrong"))).await;
    assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");
    let (status, body) = post_token(&http, &provider, &form, Some((CLIENT, SECRET))).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert!(body["access_token"].as_str().is_some());
    let methods: Vec<_> = provider
        .calls_to(ProviderEndpoint::Token)
        .iter()
        .map(|call| (call.client_auth, call.status))
        .collect();
    assert_eq!(
        methods,
        [
            (
                Some(ClientAuthMethod::ClientSecretBasic),
                StatusCode::UNAUTHORIZED
            ),
            (Some(ClientAuthMethod::ClientSecretBasic), StatusCode::OK)
        ]
    );
}

#[tokio::test]
async fn malformed_token_requests_get_oauth_errors_not_a_panic() {
    let provider = start().await;
    let http = http();
    let (status, body) = post_token(
        &http,
        &provider,
        &[("grant_type", "authorization_code")],
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (reqwest::StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    let (status, body) = post_token(
        &http,
        &provider,
        &[
            ("client_id", CLIENT),
            ("client_secret", SECRET),
            ("client_secret", SECRET),
        ],
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (reqwest::StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    let response = http
        .post(provider.token_endpoint())
        .header("authorization", "Basic %%%")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=authorization_code")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);
    let response = http
        .post(provider.token_endpoint())
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::BAD_REQUEST);
    let (status, body) = post_token(
        &http,
        &provider,
        &[
            ("client_assertion_type", JWT_BEARER_TYPE),
            ("client_assertion", "a.b"),
            ("grant_type", "authorization_code"),
        ],
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (reqwest::StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
}

// ---------------------------------------------------------------------------------------------
// Token endpoint: private_key_jwt

const JWT_BEARER_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn client_key() -> &'static RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap())
}

async fn start_with_certificate_client() -> TestProvider {
    let provider = start().await;
    provider.register_client(
        CERT_CLIENT,
        ClientCredential::KeyPair {
            public_key: client_key().to_public_key(),
            cert_der: Some(CERT_DER.to_vec()),
        },
    );
    provider
}

fn thumbprints() -> Value {
    let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, CERT_DER);
    json!({ "x5t#S256": b64(Sha256::digest(CERT_DER)), "x5t": b64(sha1) })
}

fn assertion_claims(provider: &TestProvider) -> Value {
    json!({
        "iss": CERT_CLIENT,
        "sub": CERT_CLIENT,
        "aud": provider.token_endpoint(),
        "iat": now(),
        "nbf": now(),
        "exp": now() + 300,
        "jti": random(),
    })
}

fn assertion(key: &RsaPrivateKey, alg: &str, header: Value, claims: &Value) -> String {
    let mut full_header = json!({ "alg": alg, "typ": "JWT" });
    for (name, value) in header.as_object().unwrap() {
        full_header[name] = value.clone();
    }
    let input = format!(
        "{}.{}",
        b64(full_header.to_string()),
        b64(claims.to_string())
    );
    let hashed = Sha256::digest(input.as_bytes());
    let signature = match alg {
        "PS256" => key.sign_with_rng(&mut rand::rngs::OsRng, Pss::new::<Sha256>(), &hashed),
        _ => key.sign(Pkcs1v15Sign::new::<Sha256>(), &hashed),
    }
    .unwrap();
    format!("{input}.{}", b64(signature))
}

async fn redeem_with_assertion(
    http: &reqwest::Client,
    provider: &TestProvider,
    code: &str,
    verifier: &str,
    assertion: &str,
) -> (reqwest::StatusCode, Value) {
    post_token(
        http,
        provider,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
            ("client_id", CERT_CLIENT),
            ("client_assertion_type", JWT_BEARER_TYPE),
            ("client_assertion", assertion),
        ],
        None,
    )
    .await
}

async fn assertion_outcome(
    provider: &TestProvider,
    assertion: &str,
) -> (reqwest::StatusCode, Value) {
    let http = http();
    let login = login(provider, CERT_CLIENT, &[]);
    let code = code_for(&http, &login, "alice", true).await;
    redeem_with_assertion(&http, provider, &code, &login.verifier, assertion).await
}

#[tokio::test]
async fn private_key_jwt_signed_with_the_registered_key_is_accepted() {
    let provider = start_with_certificate_client().await;
    for alg in ["RS256", "PS256"] {
        let signed = assertion(
            client_key(),
            alg,
            thumbprints(),
            &assertion_claims(&provider),
        );
        let (status, body) = assertion_outcome(&provider, &signed).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{alg}: {body}");
        let token = jwt::decode(body["id_token"].as_str().unwrap()).unwrap();
        assert_eq!(token.claims["aud"], CERT_CLIENT);
    }
    // Either thumbprint alone names the certificate.
    for only in ["x5t", "x5t#S256"] {
        let header = json!({ only: thumbprints()[only] });
        let signed = assertion(client_key(), "RS256", header, &assertion_claims(&provider));
        let (status, body) = assertion_outcome(&provider, &signed).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{only}: {body}");
    }
    assert!(provider
        .calls_to(ProviderEndpoint::Token)
        .iter()
        .all(|call| call.client_auth == Some(ClientAuthMethod::PrivateKeyJwt)));
}

#[tokio::test]
async fn private_key_jwt_for_another_audience_is_refused() {
    let provider = start_with_certificate_client().await;
    for aud in [
        format!("{}/", provider.token_endpoint()),
        provider.issuer().to_owned(),
        "https://login.microsoftonline.com/common/oauth2/token".to_owned(),
    ] {
        let mut claims = assertion_claims(&provider);
        claims["aud"] = json!(aud);
        let signed = assertion(client_key(), "RS256", thumbprints(), &claims);
        let (status, body) = assertion_outcome(&provider, &signed).await;
        assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED, "{aud}");
        assert_eq!(body["error"], "invalid_client");
    }
}

#[tokio::test]
async fn expired_or_too_long_lived_private_key_jwt_is_refused() {
    let provider = start_with_certificate_client().await;
    for (exp, why) in [
        (Some(now() - 10), "expired"),
        (Some(now() + 3600), "10 minutes"),
        (None, "exp is missing"),
    ] {
        let mut claims = assertion_claims(&provider);
        match exp {
            Some(exp) => claims["exp"] = json!(exp),
            None => {
                claims.as_object_mut().unwrap().remove("exp");
            }
        }
        let signed = assertion(client_key(), "RS256", thumbprints(), &claims);
        let (status, body) = assertion_outcome(&provider, &signed).await;
        assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED);
        assert!(
            body["error_description"].as_str().unwrap().contains(why),
            "{body}"
        );
    }
}

#[tokio::test]
async fn replayed_private_key_jwt_is_refused() {
    let provider = start_with_certificate_client().await;
    let signed = assertion(
        client_key(),
        "RS256",
        thumbprints(),
        &assertion_claims(&provider),
    );
    let (status, _) = assertion_outcome(&provider, &signed).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let (status, body) = assertion_outcome(&provider, &signed).await;
    assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED);
    assert!(body["error_description"].as_str().unwrap().contains("jti"));
}

#[tokio::test]
async fn private_key_jwt_signed_by_another_key_or_naming_another_certificate_is_refused() {
    let provider = start_with_certificate_client().await;
    let other = RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
    let cases = [
        assertion(&other, "RS256", thumbprints(), &assertion_claims(&provider)),
        assertion(
            client_key(),
            "RS256",
            json!({ "x5t#S256": b64(Sha256::digest(b"another certificate")) }),
            &assertion_claims(&provider),
        ),
        assertion(
            client_key(),
            "RS256",
            json!({}),
            &assertion_claims(&provider),
        ),
        {
            let mut claims = assertion_claims(&provider);
            claims["sub"] = json!("someone-else");
            assertion(client_key(), "RS256", thumbprints(), &claims)
        },
        {
            let mut claims = assertion_claims(&provider);
            claims.as_object_mut().unwrap().remove("jti");
            assertion(client_key(), "RS256", thumbprints(), &claims)
        },
        // alg is what the header says; HS256 is not a certificate credential.
        {
            let good = assertion(
                client_key(),
                "RS256",
                thumbprints(),
                &assertion_claims(&provider),
            );
            let (_, rest) = good.split_once('.').unwrap();
            format!("{}.{rest}", b64(json!({"alg": "HS256"}).to_string()))
        },
    ];
    for (i, signed) in cases.iter().enumerate() {
        let (status, body) = assertion_outcome(&provider, signed).await;
        assert_eq!(
            status,
            reqwest::StatusCode::UNAUTHORIZED,
            "case {i}: {body}"
        );
        assert_eq!(body["error"], "invalid_client");
    }
    // A secret is no use to a certificate client, nor an assertion to a secret client.
    let (status, _) = post_token(
        &http(),
        &provider,
        &[("client_id", CERT_CLIENT), ("client_secret", "guess")],
        None,
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED);
}

// ---------------------------------------------------------------------------------------------
// Forgeries and keys

#[tokio::test]
async fn alg_none_forgery_has_an_alg_none_header_and_an_empty_signature() {
    let provider = start().await;
    provider
        .forge_next(Forgery::default().signing(Signing::AlgNone))
        .unwrap();
    let (token, compact, _) = id_token(&http(), &provider, "alice", true, &[]).await;
    assert_eq!(token.header["alg"], "none");
    assert!(token.signature.is_empty());
    assert!(compact.ends_with('.'));
    // Only the next token is forged.
    let (next, _, _) = id_token(&http(), &provider, "alice", true, &[]).await;
    assert_eq!(next.header["alg"], "RS256");
}

#[tokio::test]
async fn hmac_forgery_is_keyed_with_the_public_key_pem() {
    let provider = start().await;
    provider
        .forge_next(Forgery::default().signing(Signing::HmacWithPublicKey))
        .unwrap();
    let (token, _, _) = id_token(&http(), &provider, "alice", true, &[]).await;
    assert_eq!(token.header["alg"], "HS256");
    assert_eq!(token.header["kid"], provider.current_kid());
    let pem = provider.shared.lock().keys[0].public_pem().unwrap();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, pem.as_bytes());
    ring::hmac::verify(&key, token.signing_input.as_bytes(), &token.signature).unwrap();
}

#[tokio::test]
async fn foreign_key_forgery_keeps_the_kid_but_does_not_verify() {
    let provider = start().await;
    let http = http();
    provider
        .forge_next(Forgery::default().signing(Signing::ForeignKey))
        .unwrap();
    let (token, _, _) = id_token(&http, &provider, "alice", true, &[]).await;
    assert_eq!(token.header["alg"], "RS256");
    assert_eq!(token.header["kid"], provider.current_kid());
    let keys = jwks(&http, &provider).await;
    assert!(verify_with_jwks(&token, &keys).is_err());
}

#[tokio::test]
async fn unpublished_kid_is_in_the_jwks_only_after_publishing() {
    let provider = start().await;
    let http = http();
    let first_kid = provider.current_kid();
    provider
        .forge_next(Forgery::default().signing(Signing::UnpublishedKid))
        .unwrap();
    let (token, _, _) = id_token(&http, &provider, "alice", true, &[]).await;
    let new_kid = token.header["kid"].as_str().unwrap().to_owned();
    assert_ne!(new_kid, first_kid);
    let keys = jwks(&http, &provider).await;
    assert_eq!(
        verify_with_jwks(&token, &keys),
        Err("kid not in the JWKS".into())
    );

    assert_eq!(provider.rotate_signing_key(true).unwrap(), new_kid);
    assert_eq!(provider.publish_pending_key(), None);
    let keys = jwks(&http, &provider).await;
    let kids: Vec<_> = keys.iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, [new_kid.as_str(), first_kid.as_str()]);
    verify_with_jwks(&token, &keys).unwrap();
    let (next, _, _) = id_token(&http, &provider, "alice", true, &[]).await;
    assert_eq!(next.header["kid"], new_kid);
    verify_with_jwks(&next, &keys).unwrap();
}

#[tokio::test]
async fn rotation_without_keep_old_withdraws_the_old_key() {
    let provider = start().await;
    let http = http();
    let (old_token, _, _) = id_token(&http, &provider, "alice", true, &[]).await;
    provider
        .forge_next(Forgery::default().signing(Signing::UnpublishedKid))
        .unwrap();
    assert!(provider.publish_pending_key().is_some());
    let new_kid = provider.rotate_signing_key(false).unwrap();
    let keys = jwks(&http, &provider).await;
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kid"], new_kid);
    assert!(verify_with_jwks(&old_token, &keys).is_err());
}

#[tokio::test]
async fn claim_forgery_merges_claims_and_null_removes_them() {
    let provider = start().await;
    provider
        .forge_next(
            Forgery::default()
                .claim("aud", json!([CLIENT, "another-app"]))
                .claim("tid", "00000000-0000-0000-0000-000000000000")
                .without("nonce")
                .header("typ", Value::Null),
        )
        .unwrap();
    let http = http();
    let (token, _, _) = id_token(&http, &provider, "alice", true, &[]).await;
    assert_eq!(token.claims["aud"], json!([CLIENT, "another-app"]));
    assert_eq!(token.claims["tid"], "00000000-0000-0000-0000-000000000000");
    assert!(token.claims.get("nonce").is_none());
    assert!(token.header.get("typ").is_none());
    verify_with_jwks(&token, &jwks(&http, &provider).await).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Availability and logout

#[tokio::test]
async fn unavailable_provider_answers_503_everywhere() {
    let provider = start().await;
    let http = http();
    provider.set_available(false);
    for url in [
        provider.discovery_url(),
        provider.jwks_uri(),
        login(&provider, CLIENT, &[]).url,
        provider.end_session_endpoint(),
    ] {
        let response = http.get(&url).send().await.unwrap();
        assert_eq!(
            response.status(),
            reqwest::StatusCode::SERVICE_UNAVAILABLE,
            "{url}"
        );
    }
    let (status, _) = http
        .post(provider.token_endpoint())
        .form(&[("grant_type", "authorization_code")])
        .send()
        .await
        .map(|r| (r.status(), ()))
        .unwrap();
    assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE);
    provider.set_available(true);
    let response = http.get(provider.discovery_url()).send().await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(provider.calls().len(), 6);
}

#[tokio::test]
async fn logout_is_recorded_and_returns_to_the_post_logout_redirect_uri() {
    let provider = start().await;
    let http = http();
    let back = "https://mail.contoso.com/_gateway/logout?done=1";
    let url = form::append_query(
        &provider.end_session_endpoint(),
        &[("post_logout_redirect_uri", back), ("state", "xyz")],
    );
    let response = http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::FOUND);
    assert_eq!(response.headers()["location"], format!("{back}&state=xyz"));
    let page = http
        .get(provider.end_session_endpoint())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("You have signed out"));
    let calls = provider.calls_to(ProviderEndpoint::Logout);
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].param("post_logout_redirect_uri"), Some(back));
    assert_eq!(calls[1].param("post_logout_redirect_uri"), None);
    assert!(provider.calls_to(ProviderEndpoint::Token).is_empty());
}

#[test]
fn sign_in_form_carries_every_parameter_and_the_choice() {
    let (url, form) = sign_in_form(
        "http://127.0.0.1:1/t/oauth2/authorize?client_id=c&state=a%2Bb&claims=%7B%7D",
        "bob",
        false,
    );
    assert_eq!(url, "http://127.0.0.1:1/t/oauth2/authorize");
    let expected: Vec<(String, String)> = [
        ("client_id", "c"),
        ("state", "a+b"),
        ("claims", "{}"),
        ("user", "bob"),
        ("mfa", "no"),
        ("decision", "approve"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(form, expected);
}

#[test]
fn jwt_decode_refuses_malformed_tokens() {
    for bad in [
        "",
        "a.b",
        "a.b.c.d",
        "!!.e30.",
        "e30.bm90IGpzb24.",
        "W10.e30.",
    ] {
        assert!(jwt::decode(bad).is_err(), "{bad}");
    }
    assert!(jwt::decode("e30.e30.").is_ok());
}

#[tokio::test]
async fn provider_listens_on_loopback_only_and_stops_when_dropped() {
    let options = ProviderOptions {
        addr: Some("0.0.0.0:0".parse().unwrap()),
        ..ProviderOptions::default()
    };
    assert!(TestProvider::start(options).await.is_err());

    let provider = start().await;
    let http = http();
    let url = provider.discovery_url();
    assert!(http.get(&url).send().await.unwrap().status().is_success());
    drop(provider);
    tokio::task::yield_now().await;
    // Neither the kept-alive connection nor a new one is answered.
    assert!(http.get(&url).send().await.is_err());
}

/// The gateway's relying-party library must accept what the provider serves, exactly as served.
#[tokio::test]
async fn openidconnect_accepts_the_discovery_document_keys_and_tokens() {
    use openidconnect::core::{
        CoreIdTokenVerifier, CoreJsonWebKeySet, CoreProviderMetadata, CoreTokenResponse,
    };
    use openidconnect::{ClientId, IssuerUrl, Nonce, OAuth2TokenResponse, TokenResponse};

    let provider = start().await;
    let http = http();
    let get = |url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let metadata: CoreProviderMetadata =
        serde_json::from_str(&get(provider.discovery_url()).await).unwrap();
    assert_eq!(metadata.issuer().as_str(), provider.issuer());
    assert_eq!(
        IssuerUrl::new(provider.issuer().into())
            .unwrap()
            .join(".well-known/openid-configuration")
            .unwrap()
            .as_str(),
        provider.discovery_url()
    );
    let keys: CoreJsonWebKeySet = serde_json::from_str(&get(provider.jwks_uri()).await).unwrap();

    let login = login(&provider, CLIENT, &[]);
    let code = code_for(&http, &login, "alice", true).await;
    let (_, body) = redeem(&http, &provider, &code, &login.verifier).await;
    let response: CoreTokenResponse = serde_json::from_value(body).unwrap();
    assert_eq!(response.expires_in(), Some(Duration::from_secs(3600)));
    let verifier = CoreIdTokenVerifier::new_public_client(
        ClientId::new(CLIENT.into()),
        IssuerUrl::new(provider.issuer().into()).unwrap(),
        keys,
    );
    let claims = response
        .id_token()
        .unwrap()
        .claims(&verifier, &Nonce::new(login.nonce.clone()))
        .unwrap();
    let amr: Vec<&str> = claims
        .auth_method_refs()
        .unwrap()
        .iter()
        .map(|amr| amr.as_str())
        .collect();
    assert_eq!(amr, ["pwd", "mfa"]);
    assert!(claims.auth_time().is_some());
}
