//! Outages, logout, the sign-in form helper, the listener, and the gateway's own OpenID library reading what the provider serves.

use super::*;

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
    let page = get_text(&http, provider.end_session_endpoint()).await;
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
