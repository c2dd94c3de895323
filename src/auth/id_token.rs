//! Verifying the ID token Entra ID returns: every check of DESIGN.md section 5, each refusal with
//! its own reason code for the audit log. The signature, `iss`, `aud`, `exp` and `nonce` checks
//! are the `openidconnect` crate's; Entra's own claims (`tid`, `amr`, `acrs`, `auth_time`
//! freshness, `azp` with several audiences, `nbf`) are checked here.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use openidconnect::core::{
    CoreGenderClaim, CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
};
use openidconnect::{
    AdditionalClaims, ClaimsVerificationError, ClientId, IdToken, IdTokenVerifier, IssuerUrl,
    Nonce, SignatureVerificationError,
};
use serde::{Deserialize, Serialize};

use crate::session::EntraId;

/// Entra's claims beyond the OpenID Connect core set.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct EntraClaims {
    #[serde(default)]
    pub tid: Option<String>,
    #[serde(default)]
    pub oid: Option<String>,
    #[serde(default)]
    pub upn: Option<String>,
    #[serde(default)]
    pub unique_name: Option<String>,
    #[serde(default)]
    pub preferred_username: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub onprem_sid: Option<String>,
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    /// Groups overage: more groups than fit in a token (200 in a JWT).
    #[serde(default)]
    pub hasgroups: Option<bool>,
    #[serde(default, rename = "_claim_names")]
    pub claim_names: Option<serde_json::Map<String, serde_json::Value>>,
    /// Conditional Access authentication contexts satisfied (`c1` … `c99`).
    #[serde(default)]
    pub acrs: Option<Vec<String>>,
    /// Entra's sign-in session id, used by front-channel logout.
    #[serde(default)]
    pub sid: Option<String>,
    #[serde(default)]
    pub nbf: Option<i64>,
    /// Every other claim, for the one whose name the configuration gives
    /// (`oidc.account_name_claim`).
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl AdditionalClaims for EntraClaims {}

type EntraIdToken = IdToken<
    EntraClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

/// Why an ID token was refused: the reason code goes to the audit log and the metric, the
/// message to the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Malformed,
    BadSignature,
    /// Signed with a key id the issuer's JWKS does not list (yet): refetch the keys and retry.
    UnknownKey,
    DisallowedAlgorithm,
    WrongIssuer,
    WrongAudience,
    Expired,
    NotYetValid,
    NonceMismatch,
    WrongTenant,
    MissingIdentity,
    NoMfa,
    AuthTooOld,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed_token",
            Refusal::BadSignature => "bad_signature",
            Refusal::UnknownKey => "unknown_key",
            Refusal::DisallowedAlgorithm => "disallowed_algorithm",
            Refusal::WrongIssuer => "wrong_issuer",
            Refusal::WrongAudience => "wrong_audience",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::NonceMismatch => "nonce_mismatch",
            Refusal::WrongTenant => "wrong_tenant",
            Refusal::MissingIdentity => "missing_identity",
            Refusal::NoMfa => "no_mfa",
            Refusal::AuthTooOld => "auth_too_old",
        }
    }
}

/// What a token must satisfy, from configuration and the login transaction.
pub struct Expectations<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub nonce: &'a str,
    pub allowed_tenants: &'a [EntraId],
    pub clock_skew: Duration,
    pub amr_any_of: &'a [String],
    pub acrs_any_of: &'a [String],
    pub max_auth_age: Duration,
    /// Unix seconds.
    pub now: u64,
    /// `oidc.account_name_claim`: the claim carrying the on-premises account name.
    pub account_name_claim: Option<&'a str>,
}

/// The identity a verified token proves.
#[derive(Debug, Clone)]
pub struct VerifiedIdentity {
    pub oid: String,
    pub tid: String,
    pub upn: Option<String>,
    pub name: Option<String>,
    pub onprem_sid: Option<String>,
    pub groups: Vec<String>,
    pub groups_overage: bool,
    /// The `amr` values that satisfied policy.
    pub amr: Vec<String>,
    /// The `acrs` values that satisfied policy.
    pub acrs: Vec<String>,
    /// Every `acrs` value in the token (a route may require one that `[mfa]` does not list).
    pub all_acrs: Vec<String>,
    /// Every `amr` value, for the audit log.
    pub all_amr: Vec<String>,
    pub auth_time: u64,
    pub entra_sid: Option<String>,
    /// The on-premises account name (sAMAccountName), from the claim
    /// [`Expectations::account_name_claim`] names, when it holds one.
    pub account_name: Option<String>,
}

/// Facts read from a token that failed verification, for the audit log (never the token).
#[derive(Debug, Clone, Default)]
pub struct UnverifiedFacts {
    pub oid: Option<String>,
    pub upn: Option<String>,
    pub tid: Option<String>,
    pub amr: Vec<String>,
}

pub struct Verification {
    pub result: Result<VerifiedIdentity, Refusal>,
    /// Filled when the claims could be read, so refusals can say who was refused.
    pub facts: UnverifiedFacts,
}

/// Verifies `token` against `keys` and `expected`.
pub fn verify(token: &str, keys: &CoreJsonWebKeySet, expected: &Expectations<'_>) -> Verification {
    let mut facts = UnverifiedFacts::default();
    let result = verify_inner(token, keys, expected, &mut facts);
    Verification { result, facts }
}

fn verify_inner(
    token: &str,
    keys: &CoreJsonWebKeySet,
    expected: &Expectations<'_>,
    facts: &mut UnverifiedFacts,
) -> Result<VerifiedIdentity, Refusal> {
    let parsed = EntraIdToken::from_str(token).map_err(|_| Refusal::Malformed)?;
    let issuer = IssuerUrl::new(expected.issuer.to_owned()).map_err(|_| Refusal::WrongIssuer)?;
    let skew = i64::try_from(expected.clock_skew.as_secs()).unwrap_or(i64::MAX);
    let now = i64::try_from(expected.now).unwrap_or(i64::MAX);
    let now_minus_skew = timestamp(now.saturating_sub(skew));
    let latest_iat = now.saturating_add(skew);
    let verifier = IdTokenVerifier::new_public_client(
        ClientId::new(expected.client_id.to_owned()),
        issuer,
        keys.clone(),
    )
    // Only asymmetric signatures: never `none`, never HMAC keyed with a public key.
    .set_allowed_algs([
        CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
        CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
        CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
        CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    ])
    // Extra audiences are allowed only with `azp` naming this client; checked below.
    .set_other_audience_verifier_fn(|_| true)
    // `exp` with the configured skew: compare against a clock set back by it.
    .set_time_fn(move || now_minus_skew)
    .set_issue_time_verifier_fn(move |iat: DateTime<Utc>| {
        if iat.timestamp() > latest_iat {
            Err("issued in the future".to_owned())
        } else {
            Ok(())
        }
    });
    let nonce = Nonce::new(expected.nonce.to_owned());
    let claims = parsed.claims(&verifier, &nonce).map_err(|e| classify(&e))?;

    let extra = claims.additional_claims();
    facts.oid = extra.oid.clone();
    facts.upn = extra.upn.clone().or_else(|| extra.unique_name.clone());
    facts.tid = extra.tid.clone();
    facts.amr = claims
        .auth_method_refs()
        .map(|refs| refs.iter().map(|r| r.as_str().to_owned()).collect())
        .unwrap_or_default();

    // Several audiences: the token must say it was issued to this client.
    if claims.audiences().len() > 1 || claims.authorized_party().is_some() {
        match claims.authorized_party() {
            Some(azp) if azp.as_str() == expected.client_id => {}
            _ => return Err(Refusal::WrongAudience),
        }
    }
    if let Some(nbf) = extra.nbf {
        if nbf > now.saturating_add(skew) {
            return Err(Refusal::NotYetValid);
        }
    }
    let tid = extra.tid.clone().ok_or(Refusal::MissingIdentity)?;
    // The rule the route policy applies to the session later (a GUID in any letter case is one
    // tenant; other identifiers exactly), so a token admitted here is never refused there.
    if !expected
        .allowed_tenants
        .iter()
        .any(|allowed| allowed.matches(&tid))
    {
        return Err(Refusal::WrongTenant);
    }
    let oid = extra.oid.clone().ok_or(Refusal::MissingIdentity)?;

    let amr: Vec<String> = facts
        .amr
        .iter()
        .filter(|value| expected.amr_any_of.iter().any(|want| want == *value))
        .cloned()
        .collect();
    let acrs: Vec<String> = extra
        .acrs
        .iter()
        .flatten()
        .filter(|value| expected.acrs_any_of.iter().any(|want| want == *value))
        .cloned()
        .collect();
    if amr.is_empty() && acrs.is_empty() {
        return Err(Refusal::NoMfa);
    }

    // Without auth_time the freshness of the sign-in cannot be judged: refuse rather than
    // assume.
    let auth_time = claims.auth_time().ok_or(Refusal::AuthTooOld)?.timestamp();
    let oldest =
        now.saturating_sub(i64::try_from(expected.max_auth_age.as_secs()).unwrap_or(i64::MAX));
    if auth_time < oldest.saturating_sub(skew) || auth_time > now.saturating_add(skew) {
        return Err(Refusal::AuthTooOld);
    }

    let groups_overage = extra.groups.is_none()
        && (extra.hasgroups == Some(true)
            || extra
                .claim_names
                .as_ref()
                .is_some_and(|names| names.contains_key("groups")));
    Ok(VerifiedIdentity {
        oid,
        tid,
        upn: facts.upn.clone(),
        name: extra.name.clone(),
        onprem_sid: extra.onprem_sid.clone(),
        groups: extra.groups.clone().unwrap_or_default(),
        groups_overage,
        amr,
        acrs,
        all_acrs: extra.acrs.clone().unwrap_or_default(),
        all_amr: facts.amr.clone(),
        auth_time: u64::try_from(auth_time).unwrap_or(0),
        entra_sid: extra.sid.clone(),
        account_name: expected
            .account_name_claim
            .and_then(|claim| extra.other.get(claim))
            .and_then(|value| value.as_str())
            .filter(|name| is_account_name(name))
            .map(str::to_owned),
    })
}

/// A plausible sAMAccountName: not empty, short, and without the characters Active Directory
/// refuses in one (among them `\` and `@`, which would make it another logon format).
fn is_account_name(name: &str) -> bool {
    const REFUSED: &[char] = &[
        '"', '/', '\\', '[', ']', ':', ';', '|', '=', ',', '+', '*', '?', '<', '>', '@',
    ];
    !name.is_empty()
        && name.len() <= 256
        && !name.contains(REFUSED)
        && !name.chars().any(char::is_control)
        && name.trim() == name
}

fn timestamp(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, 0).single().unwrap_or_default()
}

fn classify(error: &ClaimsVerificationError) -> Refusal {
    match error {
        ClaimsVerificationError::Expired(_) => Refusal::Expired,
        ClaimsVerificationError::InvalidAudience(_) => Refusal::WrongAudience,
        ClaimsVerificationError::InvalidIssuer(_) => Refusal::WrongIssuer,
        ClaimsVerificationError::InvalidNonce(_) => Refusal::NonceMismatch,
        ClaimsVerificationError::SignatureVerification(e) => match e {
            SignatureVerificationError::NoMatchingKey => Refusal::UnknownKey,
            SignatureVerificationError::DisallowedAlg(_)
            | SignatureVerificationError::UnsupportedAlg(_)
            | SignatureVerificationError::NoSignature => Refusal::DisallowedAlgorithm,
            _ => Refusal::BadSignature,
        },
        _ => Refusal::Malformed,
    }
}
