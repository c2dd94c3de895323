//! The browser session (single sign-on, opt-in) and the hybrid flow Exchange's own sign-in uses.

use super::*;

const EXCHANGE_ONLINE: &str = "00000002-0000-0ff1-ce00-000000000000";
const EXCHANGE_REPLY: &str = "https://mail.contoso.com/owa/";

async fn start_with_single_sign_on(single_sign_on: bool) -> TestProvider {
    let provider = TestProvider::start(ProviderOptions {
        single_sign_on,
        ..ProviderOptions::default()
    })
    .await
    .unwrap();
    provider.register_client(CLIENT, ClientCredential::Secret(SECRET.into()));
    provider.register_client(EXCHANGE_ONLINE, ClientCredential::Secret(SECRET.into()));
    provider
}

/// Signs alice in on the page; returns the provider's `Cookie` header for this browser.
async fn sign_in_on_the_page(http: &reqwest::Client, provider: &TestProvider) -> Option<String> {
    let login = login(provider, CLIENT, &[("response_mode", "form_post")]);
    let (url, form) = sign_in_form(&login.url, "alice", true);
    let response = http.post(url).form(&form).send().await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    response
        .headers()
        .get("set-cookie")
        .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_owned())
}

fn exchange_authorize(provider: &TestProvider, nonce: &str, extra: &[(&str, &str)]) -> String {
    let mut params = vec![
        ("client_id", EXCHANGE_ONLINE),
        ("redirect_uri", EXCHANGE_REPLY),
        ("response_type", "code id_token"),
        ("response_mode", "form_post"),
        ("scope", "openid"),
        ("state", "exchange-state"),
        ("nonce", nonce),
    ];
    params.extend_from_slice(extra);
    form::append_query(&provider.authorization_endpoint(), &params)
}

#[tokio::test]
async fn a_signed_in_browser_gets_the_second_clients_id_token_without_a_page() {
    let provider = start_with_single_sign_on(true).await;
    let http = http();
    let cookie = sign_in_on_the_page(&http, &provider)
        .await
        .expect("a sign-in on the page starts a browser session");
    assert!(cookie.starts_with(&format!("{SSO_COOKIE}=")));

    let response = http
        .get(exchange_authorize(&provider, "exchange-nonce", &[]))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let (action, fields) = parse_form_post(&response.text().await.unwrap()).unwrap();
    assert_eq!(action, EXCHANGE_REPLY);
    assert_eq!(field(&fields, "state"), Some("exchange-state"));
    let code = field(&fields, "code").unwrap();
    let token = jwt::decode(field(&fields, "id_token").unwrap()).unwrap();
    verify_with_jwks(&token, &jwks(&http, &provider).await).unwrap();
    assert_eq!(token.claims["aud"], EXCHANGE_ONLINE);
    assert_eq!(token.claims["nonce"], "exchange-nonce");
    assert_eq!(token.claims["upn"], "alice@contoso.com");
    assert_eq!(token.claims["amr"], json!(["pwd", "mfa"]));
    assert_eq!(
        token.claims["c_hash"],
        b64(&Sha256::digest(code.as_bytes())[..16])
    );
}

#[tokio::test]
async fn without_a_session_or_with_prompt_login_the_page_is_shown() {
    let provider = start_with_single_sign_on(true).await;
    let http = http();
    let page = |response: reqwest::Response| async move {
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        let html = response.text().await.unwrap();
        parse_form_post(&html).is_none_or(|(action, _)| action != EXCHANGE_REPLY)
    };
    let no_cookie = http
        .get(exchange_authorize(&provider, "n", &[]))
        .send()
        .await
        .unwrap();
    assert!(page(no_cookie).await, "no session: the sign-in page");
    let cookie = sign_in_on_the_page(&http, &provider).await.unwrap();
    let forced = http
        .get(exchange_authorize(&provider, "n", &[("prompt", "login")]))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert!(page(forced).await, "prompt=login: the sign-in page again");
    let unknown = http
        .get(exchange_authorize(&provider, "n", &[]))
        .header("cookie", format!("{SSO_COOKIE}=forged"))
        .send()
        .await
        .unwrap();
    assert!(page(unknown).await, "a session id it never issued");
}

#[tokio::test]
async fn single_sign_on_is_off_unless_asked_for() {
    let provider = start_with_single_sign_on(false).await;
    assert_eq!(sign_in_on_the_page(&http(), &provider).await, None);
}

#[tokio::test]
async fn signing_out_at_the_provider_ends_the_browser_session() {
    let provider = start_with_single_sign_on(true).await;
    let http = http();
    let cookie = sign_in_on_the_page(&http, &provider).await.unwrap();
    let logout = http
        .get(provider.end_session_endpoint())
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    let cleared = logout.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cleared.starts_with(&format!("{SSO_COOKIE}=;")) && cleared.contains("Max-Age=0"));
    let again = http
        .get(exchange_authorize(&provider, "n", &[]))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    let html = again.text().await.unwrap();
    assert!(
        parse_form_post(&html).is_none_or(|(action, _)| action != EXCHANGE_REPLY),
        "the old session cookie no longer signs anyone in"
    );
}
