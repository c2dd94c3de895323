//! The token endpoint: authorization codes and client secrets.

use super::*;

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
