//! `/_gateway/wsfed/`: the WS-Federation issuer Exchange's AD FS mode sends browsers to
//! (`AdfsIssuer`). A sign-in gets a token only for the realm of a route with `sso = "adfs"` on
//! this host, for a live session that passes **that route's** policy — the token never grants
//! more than the route would. Sign-outs end the gateway session like the other sign-outs.

use http::header::SET_COOKIE;
use http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::auth::{self, Admission, RequestContext, SignIn, StepUp};
use crate::body::ResponseBody;
use crate::config::Sso;
use crate::error::GatewayError;
use crate::observe::audit;
use crate::routing::{host_without_port, RouteMatch};
use crate::server::{Shared, Snapshot};
use crate::session::Session;
use crate::sso::adfs::issuer::{AdfsIssuer, EXCHANGE_MAX_AUTHENTICATION_AGE};
use crate::sso::adfs::wsfed::{self, SignInRequest, WsFedAction, WsFedRefusal};

pub(super) fn serve(
    request: &Request<Incoming>,
    sign_in: &SignIn,
    snapshot: &Snapshot,
    shared: &Shared,
    ctx: &RequestContext<'_>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let method = request.method();
    if *method != Method::GET && *method != Method::HEAD {
        return Err(GatewayError::MethodNotAllowed);
    }
    // Without [sso.adfs] there is no issuer here.
    let Some(issuer) = &snapshot.adfs else {
        return Err(GatewayError::NoRoute);
    };
    if !request.uri().path().ends_with('/') {
        // Exchange's AdfsIssuer ends with "/"; the Referer Exchange checks must start with it.
        return Ok(with_slash(request.uri()));
    }
    let action = match wsfed::parse(request.uri().query()) {
        Ok(action) => action,
        Err(refusal) => return Err(refuse(shared, refusal, None, None, ctx)),
    };
    let how = match action {
        WsFedAction::SignIn(wanted) => {
            return sign_in_to_realm(request, sign_in, issuer, &wanted, snapshot, shared, ctx)
        }
        WsFedAction::SignOut => "wsfed_signout",
        WsFedAction::SignOutCleanup => "wsfed_signout_cleanup",
    };
    // Exchange's own redirect after OWA's sign-out is same-origin; a cross-site page only gets
    // the question, as at `/_gateway/logout`.
    Ok(super::endpoints::sign_out(request, sign_in, ctx, how))
}

/// `wsignin1.0`: a token for the realm when the session passes its route's policy; otherwise
/// a sign-in at Entra first, which returns here.
fn sign_in_to_realm(
    request: &Request<Incoming>,
    sign_in: &SignIn,
    issuer: &AdfsIssuer,
    wanted: &SignInRequest,
    snapshot: &Snapshot,
    shared: &Shared,
    ctx: &RequestContext<'_>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let Some(route) = realm_route(snapshot, wanted, ctx) else {
        return Err(refuse(
            shared,
            WsFedRefusal::RealmNotPublished,
            Some(&wanted.realm),
            None,
            ctx,
        ));
    };
    let Some(policy) = &route.policy else {
        // Validation allows sso = "adfs" only on mfa routes; closed otherwise.
        return Err(GatewayError::Denied);
    };
    let start = |step_up: &StepUp| {
        sign_in.start(
            request.method(),
            request.uri(),
            request.headers(),
            step_up,
            ctx,
        )
    };
    let now = shared.clock.now();
    let young_enough = |session: &Session| {
        now.saturating_sub(session.issued_at) < EXCHANGE_MAX_AUTHENTICATION_AGE.as_secs()
    };
    // No token for a session that may have been signed out on another gateway (`[redis]`
    // unreachable, `on_unavailable = "refuse"`).
    sign_in.refuse_without_shared_state(request.headers(), "session", ctx)?;
    let (session, reseal) = match sign_in.admit(request.headers(), policy, true) {
        Admission::Allowed { session, reseal } if young_enough(&session) => (session, reseal),
        // Exchange would refuse a token this old and send the browser straight back: a fresh
        // session first.
        Admission::Allowed { .. } => return start(&StepUp::default()),
        Admission::SignInRequired { step_up, .. } => return start(&step_up),
        Admission::Denied { session, why } => {
            let error = super::admission::denied(policy, &session, why, ctx);
            shared.metrics.sso_token("adfs", false);
            return Err(error);
        }
    };
    let token = issuer
        .issue(&session, &wanted.realm, ctx.host, now)
        .map_err(|refusal| refuse(shared, refusal, Some(&wanted.realm), Some(&session), ctx))?;
    audit::sso_token_issued(
        "adfs",
        &session.oid.to_string(),
        session.upn.as_deref(),
        &wanted.realm,
        &token.assertion_id,
        ctx.client,
        ctx.host,
    );
    shared.metrics.sso_token("adfs", true);
    let mut response = wsfed::post_page(&wanted.realm, &token.wresult, wanted.context.as_deref());
    if let Some(cookie) = reseal {
        response.headers_mut().append(SET_COOKIE, cookie);
    }
    Ok(response)
}

/// The route a realm names: `https://<this host><path>/` (`http://` on a plain-HTTP listener) where a route with `sso = "adfs"`
/// publishes exactly `<path>` (compared without regard to case, as IIS compares paths).
fn realm_route<'s>(
    snapshot: &'s Snapshot,
    request: &SignInRequest,
    ctx: &RequestContext<'_>,
) -> Option<&'s crate::server::RouteEntry> {
    let path = wsfed::realm_path(&request.realm, ctx.scheme, ctx.host)?;
    let host = host_without_port(ctx.host);
    let configured = snapshot.config.routes.iter().any(|route| {
        route.sso == Sso::Adfs
            && route.host.eq_ignore_ascii_case(host.trim_end_matches('.'))
            && route.path.eq_ignore_ascii_case(path)
    });
    if !configured {
        return None;
    }
    match snapshot.router.lookup(ctx.host, path) {
        RouteMatch::Found(entry) if entry.sso == Sso::Adfs => Some(entry),
        _ => None,
    }
}

/// A refusal: its audit event, its metric, and the error that makes its page.
fn refuse(
    shared: &Shared,
    refusal: WsFedRefusal,
    realm: Option<&str>,
    session: Option<&Session>,
    ctx: &RequestContext<'_>,
) -> GatewayError {
    audit::sso_token_refused(
        "adfs",
        refusal.as_str(),
        session.map(|s| s.oid.to_string()).as_deref(),
        session.and_then(|s| s.upn.as_deref()),
        realm,
        ctx.client,
        ctx.host,
    );
    shared.metrics.sso_token("adfs", false);
    GatewayError::SsoRefused(refusal)
}

fn with_slash(uri: &http::Uri) -> Response<ResponseBody> {
    let location = match uri.query() {
        Some(query) => format!("/_gateway/wsfed/?{query}"),
        None => "/_gateway/wsfed/".to_owned(),
    };
    auth::redirect(&location)
}
