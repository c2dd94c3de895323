//! The GSSAPI calls, each blocking (a KDC exchange or a credential cache access): only ever
//! run on tokio's blocking pool by [`super::KerberosSso`]. MIT GSSAPI reads its configuration,
//! the gateway's keytab and its credential cache from the process environment
//! ([`super::environment`]).

use libgssapi::context::{ClientCtx, CtxFlags, SecurityContext};
use libgssapi::credential::{Cred, CredUsage};
use libgssapi::error::Error as GssError;
use libgssapi::name::Name;
use libgssapi::oid::{
    OidSet, GSS_MECH_KRB5, GSS_MECH_SPNEGO, GSS_NT_KRB5_ENTERPRISE_NAME, GSS_NT_KRB5_PRINCIPAL,
};

use super::error::{KerberosError, KerberosReason};

/// Kerberos and SPNEGO: MIT gives an impersonated credential only the mechanisms asked for,
/// and SPNEGO (what IIS's `Negotiate` speaks) must be among them.
fn mechanisms() -> Result<OidSet, KerberosError> {
    let mut mechs = OidSet::new();
    for mech in [GSS_MECH_KRB5, GSS_MECH_SPNEGO] {
        mechs.add(mech).map_err(|e| {
            KerberosError::new(KerberosReason::Internal, format!("mechanism set: {e}"))
        })?;
    }
    Ok(mechs)
}

/// The gateway's own credential: `principal` with its key from the client keytab
/// (`KRB5_CLIENT_KTNAME`). MIT gets (and later renews) the ticket-granting ticket from the
/// keytab by itself when the credential is first used.
pub(super) fn acquire_gateway(principal: &str) -> Result<Cred, KerberosError> {
    let name = Name::new(principal.as_bytes(), Some(GSS_NT_KRB5_PRINCIPAL)).map_err(|e| {
        KerberosError::new(
            KerberosReason::GatewayCredentials,
            format!("principal {principal:?}: {e}"),
        )
    })?;
    let gateway_error = |e: &GssError| {
        let mut error = classify("gateway credential", e, KerberosReason::GatewayCredentials);
        // Whatever the KDC says about the gateway's own account is a gateway problem, not the
        // user's ("client not found" here means the service account).
        if !matches!(
            error.reason,
            KerberosReason::KdcUnreachable | KerberosReason::ClockSkew
        ) {
            error.reason = KerberosReason::GatewayCredentials;
        }
        error
    };
    let cred = Cred::acquire(Some(&name), None, CredUsage::Initiate, Some(&mechanisms()?))
        .map_err(|e| gateway_error(&e))?;
    // Asking for the lifetime makes MIT get the ticket-granting ticket from the keytab now, so
    // a wrong key or a disabled service account is reported as such, not as the first user's
    // problem.
    cred.lifetime().map_err(|e| gateway_error(&e))?;
    Ok(cred)
}

/// How the user is named to the KDC in the S4U2Self request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UserNameKind {
    /// `alice@contoso.com`: an enterprise name, which the KDC looks up by UPN.
    Enterprise,
    /// `alice@CORP.CONTOSO.COM`: the sAMAccountName in the realm.
    Principal,
}

/// S4U2Self: a credential for `user`, obtained with the gateway's own, without the user's
/// password ("protocol transition").
pub(super) fn impersonate(
    gateway: &Cred,
    user: &str,
    kind: UserNameKind,
) -> Result<Cred, KerberosError> {
    let oid = match kind {
        UserNameKind::Enterprise => GSS_NT_KRB5_ENTERPRISE_NAME,
        UserNameKind::Principal => GSS_NT_KRB5_PRINCIPAL,
    };
    let name = Name::new(user.as_bytes(), Some(oid))
        .map_err(|e| KerberosError::new(KerberosReason::UserNotFound, format!("user name: {e}")))?;
    gateway
        .impersonate(&name, None, CredUsage::Initiate, Some(&mechanisms()?))
        .map_err(|e| classify("S4U2Self", &e, KerberosReason::Kerberos))
}

/// The seconds the credential is still valid for, as GSSAPI reports it.
pub(super) fn remaining(cred: &Cred) -> Option<std::time::Duration> {
    cred.lifetime().ok()
}

/// S4U2Proxy and the first SPNEGO token for `spn` (`HTTP/host@REALM`), with mutual
/// authentication requested and the channel binding as application data.
pub(super) fn initiate(
    cred: Cred,
    spn: &str,
    channel_binding: Option<&[u8]>,
) -> Result<(Vec<u8>, ClientCtx), KerberosError> {
    let target = Name::new(spn.as_bytes(), Some(GSS_NT_KRB5_PRINCIPAL))
        .map_err(|e| KerberosError::new(KerberosReason::Internal, format!("SPN {spn:?}: {e}")))?;
    let mut context = ClientCtx::new(
        Some(cred),
        target,
        CtxFlags::GSS_C_MUTUAL_FLAG,
        Some(GSS_MECH_SPNEGO),
    );
    match context.step(None, channel_binding) {
        Ok(Some(token)) => Ok((token.to_vec(), context)),
        Ok(None) => Err(KerberosError::new(
            KerberosReason::Internal,
            "GSSAPI produced no token".to_owned(),
        )),
        Err(e) => Err(classify("S4U2Proxy", &e, KerberosReason::Kerberos)),
    }
}

/// Feeds Exchange's answer token into the context: it must complete the context with mutual
/// authentication (the server proved it holds the SPN's key).
pub(super) fn finish(
    context: &mut ClientCtx,
    reply: &[u8],
    channel_binding: Option<&[u8]>,
) -> Result<(), KerberosError> {
    match context.step(Some(reply), channel_binding) {
        Ok(None) => {}
        Ok(Some(_)) => {
            return Err(KerberosError::new(
                KerberosReason::MutualAuthFailed,
                "the server's answer asks for another round; Exchange completes in one".to_owned(),
            ))
        }
        Err(e) => {
            return Err(KerberosError::new(
                KerberosReason::MutualAuthFailed,
                format!("the server's answer was not accepted: {e}"),
            ))
        }
    }
    let mutual = context
        .flags()
        .is_ok_and(|flags| flags.contains(CtxFlags::GSS_C_MUTUAL_FLAG));
    if context.is_complete() && mutual {
        Ok(())
    } else {
        Err(KerberosError::new(
            KerberosReason::MutualAuthFailed,
            "the context completed without mutual authentication".to_owned(),
        ))
    }
}

/// Sorts a GSSAPI failure into the reason an administrator acts on. MIT's minor codes are
/// renumbered by its mechanism glue, so the Kerberos error is recognised by its message (the
/// text of krb5's error table, stable for decades).
pub(super) fn classify(stage: &str, error: &GssError, otherwise: KerberosReason) -> KerberosError {
    let text = error.to_string();
    let reason = reason_for(&text).unwrap_or(otherwise);
    KerberosError::new(reason, format!("{stage}: {}", text.trim()))
}

pub(super) fn reason_for(text: &str) -> Option<KerberosReason> {
    let table: [(&str, KerberosReason); 14] = [
        (
            "Client not found in Kerberos database",
            KerberosReason::UserNotFound,
        ),
        (
            "Server not found in Kerberos database",
            KerberosReason::SpnNotFound,
        ),
        (
            "KDC can't fulfill requested option",
            KerberosReason::DelegationNotAllowed,
        ),
        (
            "KDC policy rejects request",
            KerberosReason::DelegationNotAllowed,
        ),
        ("Cannot contact any KDC", KerberosReason::KdcUnreachable),
        ("Cannot find KDC", KerberosReason::KdcUnreachable),
        (
            "Cannot resolve network address for KDC",
            KerberosReason::KdcUnreachable,
        ),
        ("Clock skew too great", KerberosReason::ClockSkew),
        (
            "Client's credentials have been revoked",
            KerberosReason::AccountDisabled,
        ),
        (
            "Key table entry not found",
            KerberosReason::GatewayCredentials,
        ),
        (
            "No key table entry found",
            KerberosReason::GatewayCredentials,
        ),
        (
            "Preauthentication failed",
            KerberosReason::GatewayCredentials,
        ),
        ("Key table file", KerberosReason::GatewayCredentials),
        ("Password has expired", KerberosReason::GatewayCredentials),
    ];
    table
        .iter()
        .find(|(needle, _)| text.contains(needle))
        .map(|(_, reason)| *reason)
}
