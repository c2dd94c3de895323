//! The test kit's forgeries and key rotation.

use super::*;

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
