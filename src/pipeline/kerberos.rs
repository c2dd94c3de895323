//! `sso = "kerberos"` for one request: whom the gateway signs in to Exchange (the session's UPN
//! or on-premises sAMAccountName, as `sso.kerberos.user` says), the small request body read
//! ahead so that a refused ticket can be renewed and the request sent again, and the audit
//! event of a failure. The proxy does the rest ([`crate::proxy::KerberosSignIn`]): a token per
//! try bound to the TLS connection, connections owned by the user, Exchange's answer checked.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::CONTENT_LENGTH;
use http::Request;
use http_body_util::{BodyExt, Limited};

use crate::config::KerberosUser;
use crate::error::GatewayError;
use crate::proxy::{BrowserBody, KerberosSignIn};
use crate::server::Snapshot;
use crate::session::Session;
use crate::sso::kerberos::{KerberosError, KerberosReason};

/// Request bodies up to this size are read before they are forwarded on `sso = "kerberos"`
/// routes, so the request can be sent again with a fresh ticket after Exchange's
/// `401 Negotiate`. OWA's and ECP's own requests (JSON to `service.svc`, forms) fit; uploads
/// (attachments) are streamed, and are answered with an error page in that rare case.
pub(super) const REPLAYABLE_BODY: u64 = 64 * 1024;

/// Who the request is signed in to Exchange as. A session without the identity the engine
/// needs is refused as `user_not_found`, with an audit event: nothing goes to Exchange.
pub(super) fn sign_in_for(
    session: &Session,
    snapshot: &Snapshot,
    route: &str,
    client: IpAddr,
    host: &str,
) -> Result<KerberosSignIn, GatewayError> {
    let Some(engine) = snapshot.kerberos.clone() else {
        // Validation refuses sso = "kerberos" without [sso.kerberos]: closed if it ever happens.
        return Err(GatewayError::Denied);
    };
    let user = match engine.user_kind() {
        KerberosUser::Upn => session.upn.as_deref(),
        KerberosUser::OnpremSamAccountName => session.account_name.as_deref(),
    };
    match user {
        Some(user) if !user.is_empty() => Ok(KerberosSignIn {
            engine,
            user: Arc::from(user),
        }),
        _ => {
            let error = KerberosError::new(
                KerberosReason::UserNotFound,
                format!(
                    "the sign-in carried no {} for the Kerberos ticket",
                    engine.user_kind().as_str()
                ),
            );
            engine.count_failure(error.reason);
            let error = GatewayError::Kerberos(error);
            audit_failure(&error, session, None, route, client, host);
            Err(error)
        }
    }
}

/// The body of a request read whole when it is small and announced (`Content-Length`), so the
/// request can be sent again; anything else is left streaming.
pub(super) async fn read_small_body(
    request: Request<BrowserBody>,
    pause: Duration,
) -> Result<Request<BrowserBody>, GatewayError> {
    let announced = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let small = announced.is_some_and(|length| length > 0 && length <= REPLAYABLE_BODY);
    let (parts, body) = request.into_parts();
    let body = match body {
        BrowserBody::Streaming(incoming) if small => {
            let limit = usize::try_from(REPLAYABLE_BODY).unwrap_or(usize::MAX);
            // At most 64 KiB: the upload's longest allowed pause is ample for all of it.
            let collected = tokio::time::timeout(pause, Limited::new(incoming, limit).collect());
            match collected.await {
                Ok(Ok(collected)) => BrowserBody::Read(collected.to_bytes()),
                Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                    return Err(GatewayError::BodyTooLarge)
                }
                Ok(Err(e)) => return Err(GatewayError::DownstreamAborted(e.to_string())),
                Err(_) => return Err(GatewayError::BodyTimeout),
            }
        }
        other => other,
    };
    Ok(Request::from_parts(parts, body))
}

/// The audit event of a failed Kerberos sign-in to Exchange (`error` is a
/// [`GatewayError::Kerberos`]; other errors are not Kerberos events).
pub(super) fn audit_failure(
    error: &GatewayError,
    session: &Session,
    user: Option<&str>,
    route: &str,
    client: IpAddr,
    host: &str,
) {
    let GatewayError::Kerberos(failure) = error else {
        return;
    };
    crate::observe::audit::kerberos_refused(
        failure.reason.as_str(),
        &failure.detail,
        &session.oid.to_string(),
        session.upn.as_deref(),
        user,
        route,
        client,
        host,
    );
}
