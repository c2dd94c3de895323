//! Discovery, the ID token's claims, and the authorization endpoint.

use super::*;

#[tokio::test]
async fn discovery_document_names_the_v1_endpoints_under_the_tenant() {
    let provider = start().await;
    let text = get_text(&http(), provider.discovery_url()).await;
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
    assert_eq!(
        doc["response_types_supported"],
        json!(["code", "code id_token"])
    );
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
    let page = get_text(&http, login(&provider, CLIENT, &[("claims", claims)]).url).await;
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
