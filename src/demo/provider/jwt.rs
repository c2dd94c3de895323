//! Compact JWS as Entra uses it: RS256 ID tokens signed with a key published in the JWKS, and
//! the check of a client's `private_key_jwt` assertion.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::rngs::OsRng;
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, Pss, RsaPrivateKey, RsaPublicKey};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

pub(super) fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(super) fn unb64(text: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| "not base64url".to_owned())
}

/// One RSA-2048 signing key and the `kid` it is published under.
pub(super) struct SigningKey {
    pub(super) kid: String,
    pub(super) private: RsaPrivateKey,
}

impl SigningKey {
    pub(super) fn generate() -> Result<SigningKey, rsa::Error> {
        let private = RsaPrivateKey::new(&mut OsRng, 2048)?;
        // Entra's kids are thumbprints: derived from the key, 27 base64url characters.
        let digest = Sha256::digest(private.n().to_bytes_be());
        let kid = b64(&digest[..20]);
        Ok(SigningKey { kid, private })
    }

    /// The JWKS entry, as Entra publishes it (`x5t` equals `kid` there too).
    pub(super) fn jwk(&self) -> Value {
        json!({
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": b64(self.private.n().to_bytes_be()),
            "e": b64(self.private.e().to_bytes_be()),
            "alg": "RS256",
        })
    }

    pub(super) fn sign_rs256(&self, input: &[u8]) -> Result<Vec<u8>, String> {
        self.private
            .sign_with_rng(
                &mut OsRng,
                Pkcs1v15Sign::new::<Sha256>(),
                &Sha256::digest(input),
            )
            .map_err(|e| format!("cannot sign: {e}"))
    }
}

/// The JOSE header of an Entra ID token signed with `key` (`x5t` equals `kid` there).
pub(super) fn id_token_header(key: &SigningKey) -> Map<String, Value> {
    let mut header = Map::new();
    header.insert("typ".into(), "JWT".into());
    header.insert("alg".into(), "RS256".into());
    header.insert("kid".into(), key.kid.clone().into());
    header.insert("x5t".into(), key.kid.clone().into());
    header
}

/// The JWS signing input: `header.claims`, each base64url-encoded JSON.
pub(super) fn signing_input(
    header: &Map<String, Value>,
    claims: &Map<String, Value>,
) -> Result<String, String> {
    let header = serde_json::to_vec(header).map_err(|e| e.to_string())?;
    let claims = serde_json::to_vec(claims).map_err(|e| e.to_string())?;
    Ok(format!("{}.{}", b64(header), b64(claims)))
}

/// An ID token carrying `claims`, signed RS256 with `key`.
pub(super) fn issue(claims: &Map<String, Value>, key: &SigningKey) -> Result<String, String> {
    let input = signing_input(&id_token_header(key), claims)?;
    let signature = key.sign_rs256(input.as_bytes())?;
    Ok(format!("{input}.{}", b64(signature)))
}

/// A compact JWS taken apart, signature not yet checked.
#[derive(Debug)]
pub(super) struct Jwt {
    pub(super) header: Map<String, Value>,
    pub(super) claims: Map<String, Value>,
    pub(super) signing_input: String,
    pub(super) signature: Vec<u8>,
}

pub(super) fn decode(token: &str) -> Result<Jwt, String> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a compact JWS (three dot-separated parts)".into());
    };
    let object = |part: &str, what: &str| -> Result<Map<String, Value>, String> {
        match serde_json::from_slice(&unb64(part)?) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(format!("the {what} is not a JSON object")),
        }
    };
    Ok(Jwt {
        header: object(header, "header")?,
        claims: object(claims, "claims set")?,
        signing_input: format!("{header}.{claims}"),
        signature: unb64(signature)?,
    })
}

/// What a client assertion must match: RFC 7523 as Entra applies it to certificate credentials.
pub(super) struct AssertionRules<'a> {
    pub(super) client_id: &'a str,
    pub(super) public_key: &'a RsaPublicKey,
    pub(super) cert_der: Option<&'a [u8]>,
    pub(super) token_endpoint: &'a str,
    pub(super) now: u64,
}

/// Longest an assertion may be valid for, as Entra requires of certificate credentials.
const MAX_ASSERTION_LIFETIME: u64 = 600;
/// Clock rounding between the client and the provider.
const SKEW: u64 = 5;

impl Jwt {
    /// Checks a `private_key_jwt` client assertion; returns its `jti` for the replay check.
    pub(super) fn verify_assertion(&self, rules: &AssertionRules<'_>) -> Result<String, String> {
        let hashed = Sha256::digest(self.signing_input.as_bytes());
        let verified = match self.header.get("alg").and_then(Value::as_str) {
            Some("RS256") => {
                rules
                    .public_key
                    .verify(Pkcs1v15Sign::new::<Sha256>(), &hashed, &self.signature)
            }
            Some("PS256") => {
                rules
                    .public_key
                    .verify(Pss::new::<Sha256>(), &hashed, &self.signature)
            }
            Some(other) => return Err(format!("alg {other} is not accepted (RS256, PS256)")),
            None => return Err("the header has no alg".into()),
        };
        verified.map_err(|_| "the signature does not verify with the client's key".to_owned())?;

        if let Some(der) = rules.cert_der {
            let s256 = b64(Sha256::digest(der));
            let sha1 = b64(ring::digest::digest(
                &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
                der,
            ));
            let header_s256 = self.header.get("x5t#S256");
            let header_sha1 = self.header.get("x5t");
            if header_s256.is_none() && header_sha1.is_none() {
                return Err("the header names no certificate (x5t#S256 or x5t)".into());
            }
            if header_s256.is_some_and(|v| v.as_str() != Some(s256.as_str())) {
                return Err("x5t#S256 is not the registered certificate's thumbprint".into());
            }
            if header_sha1.is_some_and(|v| v.as_str() != Some(sha1.as_str())) {
                return Err("x5t is not the registered certificate's thumbprint".into());
            }
        }

        let text = |name: &str| self.claims.get(name).and_then(Value::as_str);
        if text("iss") != Some(rules.client_id) {
            return Err("iss is not the client id".into());
        }
        if text("sub") != Some(rules.client_id) {
            return Err("sub is not the client id".into());
        }
        let audience_matches = match self.claims.get("aud") {
            Some(Value::String(aud)) => aud == rules.token_endpoint,
            Some(Value::Array(auds)) => auds
                .iter()
                .any(|aud| aud.as_str() == Some(rules.token_endpoint)),
            _ => false,
        };
        if !audience_matches {
            return Err(format!(
                "aud is not the token endpoint {}",
                rules.token_endpoint
            ));
        }
        let time = |name: &str| self.claims.get(name).and_then(Value::as_f64);
        let Some(exp) = time("exp") else {
            return Err("exp is missing".into());
        };
        let now = rules.now as f64;
        if exp <= now {
            return Err("the assertion has expired".into());
        }
        if exp > now + (MAX_ASSERTION_LIFETIME + SKEW) as f64 {
            return Err("exp is more than 10 minutes ahead".into());
        }
        if time("nbf").is_some_and(|nbf| nbf > now + SKEW as f64) {
            return Err("nbf is in the future".into());
        }
        match text("jti") {
            Some(jti) if !jti.is_empty() => Ok(jti.to_owned()),
            _ => Err("jti is missing".into()),
        }
    }
}
