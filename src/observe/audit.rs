//! Audit events for the SIEM: one structured event (target `audit`) per sign-in success or
//! refusal, sign-out and policy denial — who, from where, why. Never a token, a code, a secret
//! or a cookie value.

use std::net::IpAddr;

use crate::auth::id_token::{UnverifiedFacts, VerifiedIdentity};

pub fn sign_in_succeeded(identity: &VerifiedIdentity, client: IpAddr, host: &str) {
    tracing::info!(
        target: "audit",
        event = "sign_in",
        outcome = "success",
        oid = %identity.oid,
        tid = %identity.tid,
        upn = identity.upn.as_deref().unwrap_or("-"),
        amr = %identity.all_amr.join(","),
        acrs = %identity.acrs.join(","),
        client = %client,
        host,
    );
}

/// A sign-in refused; `facts` holds what could be read of the token, if anything.
pub fn sign_in_refused(reason: &str, facts: &UnverifiedFacts, client: IpAddr, host: &str) {
    tracing::warn!(
        target: "audit",
        event = "sign_in",
        outcome = "refused",
        reason,
        oid = facts.oid.as_deref().unwrap_or("-"),
        tid = facts.tid.as_deref().unwrap_or("-"),
        upn = facts.upn.as_deref().unwrap_or("-"),
        amr = %facts.amr.join(","),
        client = %client,
        host,
    );
}

/// A signed-in user refused by a route's policy (groups).
pub fn policy_denied(reason: &str, oid: &str, upn: Option<&str>, route: &str, client: IpAddr) {
    tracing::warn!(
        target: "audit",
        event = "policy",
        outcome = "denied",
        reason,
        oid,
        upn = upn.unwrap_or("-"),
        route,
        client = %client,
    );
}

/// Entra's `form_post` answer to Exchange's own sign-in (hybrid modern authentication) arrived
/// cross-site without the gateway's cookie and was relayed as a same-site POST; `fields` are
/// the names of the form fields (never their values).
pub fn hma_relayed(route: &str, fields: &str, client: IpAddr, host: &str) {
    tracing::info!(
        target: "audit",
        event = "hma_relay",
        outcome = "relayed",
        route,
        fields,
        client = %client,
        host,
    );
}

/// A user signed out (`how`: `owa_logoff`, `gateway_logout`).
pub fn signed_out(how: &str, oid: &str, upn: Option<&str>, client: IpAddr, host: &str) {
    tracing::info!(
        target: "audit",
        event = "sign_out",
        outcome = "success",
        reason = how,
        oid,
        upn = upn.unwrap_or("-"),
        client = %client,
        host,
    );
}

/// Entra's front-channel logout revoked the sessions of a sign-in.
pub fn front_channel_logout(oid: Option<&str>, client: IpAddr) {
    tracing::info!(
        target: "audit",
        event = "sign_out",
        outcome = "success",
        reason = "front_channel_logout",
        oid = oid.unwrap_or("-"),
        client = %client,
    );
}

/// A token issued to Exchange (`mode`: `adfs`) for a session and realm.
pub fn sso_token_issued(
    mode: &str,
    oid: &str,
    upn: Option<&str>,
    realm: &str,
    assertion_id: &str,
    client: IpAddr,
    host: &str,
) {
    tracing::info!(
        target: "audit",
        event = "sso_token",
        outcome = "issued",
        mode,
        oid,
        upn = upn.unwrap_or("-"),
        realm,
        assertion_id,
        client = %client,
        host,
    );
}

/// No token issued to Exchange, and why; the session's user when there was one.
pub fn sso_token_refused(
    mode: &str,
    reason: &str,
    oid: Option<&str>,
    upn: Option<&str>,
    realm: Option<&str>,
    client: IpAddr,
    host: &str,
) {
    tracing::warn!(
        target: "audit",
        event = "sso_token",
        outcome = "refused",
        mode,
        reason,
        oid = oid.unwrap_or("-"),
        upn = upn.unwrap_or("-"),
        realm = realm.unwrap_or("-"),
        client = %client,
        host,
    );
}

/// A session or sign-in refused because Redis is unreachable and `redis.on_unavailable` is
/// `refuse`. `oid` is the session's user, when the request carried a readable session.
pub fn shared_state_refused(what: &str, oid: Option<&str>, client: IpAddr, host: &str) {
    tracing::warn!(
        target: "audit",
        event = what,
        outcome = "refused",
        reason = "shared_state_unavailable",
        oid = oid.unwrap_or("-"),
        client = %client,
        host,
    );
}

/// A request refused because its client address (after `trusted_proxies`) is outside the
/// route's `allow_from`. No user: the refusal comes before any sign-in.
pub fn source_refused(route: &str, client: IpAddr, host: &str) {
    tracing::warn!(
        target: "audit",
        event = "source_network",
        outcome = "refused",
        reason = "source_not_allowed",
        route,
        client = %client,
        host,
    );
}

/// Exchange's forms logon not forwarded: `attempted` is the `username` the form carried (`-`
/// when none could be read), `upn` the signed-in user's. Never the password.
pub fn forms_logon_refused(
    reason: &str,
    attempted: Option<&str>,
    oid: &str,
    upn: Option<&str>,
    route: &str,
    client: IpAddr,
    host: &str,
) {
    tracing::warn!(
        target: "audit",
        event = "forms_logon",
        outcome = "refused",
        reason,
        attempted = attempted.unwrap_or("-"),
        oid,
        upn = upn.unwrap_or("-"),
        route,
        client = %client,
        host,
    );
}

/// No Kerberos sign-in to Exchange for a request of an `sso = "kerberos"` route (`reason`: the
/// Kerberos reason, such as `delegation_not_allowed` or `kdc_unreachable`; `detail`: what the
/// KDC or Exchange said, never a ticket or key). `user` is the name the ticket was asked for.
#[allow(clippy::too_many_arguments)]
pub fn kerberos_refused(
    reason: &str,
    detail: &str,
    oid: &str,
    upn: Option<&str>,
    user: Option<&str>,
    route: &str,
    client: IpAddr,
    host: &str,
) {
    tracing::warn!(
        target: "audit",
        event = "sso_ticket",
        outcome = "refused",
        mode = "kerberos",
        reason,
        detail,
        oid,
        upn = upn.unwrap_or("-"),
        user = user.unwrap_or("-"),
        route,
        client = %client,
        host,
    );
}
