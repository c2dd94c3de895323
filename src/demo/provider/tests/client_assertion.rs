//! The token endpoint with `private_key_jwt`: the gateway's certificate as its credential.

use super::*;

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
