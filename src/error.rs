//! One error type for everything that can go wrong while serving a request, labelled with the
//! side that failed: the browser, Exchange, Entra ID, or the gateway itself. The variant decides
//! the status code, the page, the log reason and the metric label in one place
//! ([`GatewayError::status`], [`GatewayError::page`], [`GatewayError::reason`],
//! [`GatewayError::response`]), so an administrator reading a log line knows at once where to
//! look, and a user reads what happened in words they understand.

use http::{Response, StatusCode};

use crate::auth::id_token::Refusal;
use crate::body::ResponseBody;
use crate::pages::{sign_in_again_link, Page, DEFAULT_RETURN};
use crate::policy::{DenialReason, SignInReason};
use crate::sso::adfs::wsfed::WsFedRefusal;
use crate::sso::kerberos::{KerberosError, KerberosReason};

/// Which side of the gateway a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The browser (or whatever sent the request) sent something unacceptable.
    Downstream,
    /// An Exchange server failed, refused or timed out.
    Upstream,
    /// Entra ID: unreachable, refused the sign-in, or answered with a token that does not pass.
    IdentityProvider,
    /// The gateway's own policy or state (not ready, denied by configuration or policy).
    Gateway,
}

impl Side {
    /// The label in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Downstream => "browser",
            Side::Upstream => "exchange",
            Side::IdentityProvider => "entra",
            Side::Gateway => "gateway",
        }
    }
}

/// Why Exchange's forms logon was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormsLogonRefusal {
    /// `username` names another account than the signed-in user.
    OtherAccount,
    /// No single readable `username` (missing, repeated, not a form, an encoding only IIS
    /// decodes): what Exchange would read cannot be known.
    Unreadable,
}

impl FormsLogonRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            FormsLogonRefusal::OtherAccount => "forms_logon_other_account",
            FormsLogonRefusal::Unreadable => "forms_logon_unreadable",
        }
    }
}

/// Why a sign-in's answer could not be matched to the browser that started it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateProblem {
    /// The answer names no `state`.
    Missing,
    /// No pending-login cookie of this browser matches the `state`.
    Unknown,
    /// The sign-in started longer ago than `oidc.login_timeout`.
    Expired,
    /// The `state` was used already on this gateway.
    Replayed,
    /// The answer carries neither a code nor an error.
    CodeMissing,
}

impl StateProblem {
    pub fn as_str(self) -> &'static str {
        match self {
            StateProblem::Missing => "state_missing",
            StateProblem::Unknown => "state_unknown",
            StateProblem::Expired => "state_expired",
            StateProblem::Replayed => "state_replayed",
            StateProblem::CodeMissing => "code_missing",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    // The browser's side.
    /// No route publishes this host and path.
    #[error("no route for this host and path")]
    NoRoute,
    /// The path cannot be normalised the way IIS would (double escaping, control bytes, …).
    #[error("path cannot be normalised")]
    BadPath,
    /// The request line or headers are unacceptable (missing Host, smuggling attempt, …).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The method is not one this address accepts.
    #[error("method not accepted here")]
    MethodNotAllowed,
    /// The request head is larger than `server.max_header_bytes`.
    #[error("request head larger than server.max_header_bytes")]
    HeadersTooLarge,
    /// The request body is larger than the upstream's `max_request_body` (or, for a body the
    /// gateway reads itself, than its small cap).
    #[error("request body larger than accepted")]
    BodyTooLarge,
    /// The request body stalled: a body the gateway reads itself did not arrive within
    /// `header_read_timeout`, or one on its way to Exchange paused for `request_body_timeout`.
    #[error("request body not received in time")]
    BodyTimeout,
    /// Too many bodies the gateway reads itself are in progress on this connection.
    #[error("too many gateway-read request bodies in progress on one connection")]
    ConnectionBusy,
    /// The browser's connection failed while its request body was being forwarded.
    #[error("browser connection failed during upload: {0}")]
    DownstreamAborted(String),
    /// A script's request (not a page load) without a usable session: 401, or 440 on OWA,
    /// never a redirect that would break the script.
    #[error("sign-in required: {why}")]
    SignInRequired {
        status: StatusCode,
        why: SignInReason,
    },
    /// A sign-in's answer that cannot be matched to this browser's pending sign-in.
    #[error("sign-in answer refused: {}", problem.as_str())]
    SignInState {
        problem: StateProblem,
        /// Where the fresh sign-in offered on the page returns to.
        return_path: String,
    },

    // Entra ID's side.
    /// Entra answered the sign-in with `error=` (the user cancelled, consent missing, …).
    #[error("Entra did not complete the sign-in: {code}")]
    SignInNotCompleted {
        code: String,
        /// The first line of `error_description`, shown escaped on the page.
        description: String,
        return_path: String,
    },
    /// Entra's token endpoint refused to exchange the code.
    #[error("Entra refused the code exchange")]
    CodeExchangeRefused { return_path: String },
    /// The ID token did not pass one of the checks.
    #[error("ID token refused: {}", refusal.reason())]
    TokenRefused {
        refusal: Refusal,
        return_path: String,
    },
    /// Entra cannot be reached (metadata, keys or token endpoint): `None` while starting a
    /// sign-in, the page to return to while finishing one.
    #[error("Entra unreachable")]
    IdentityProviderUnavailable { return_path: Option<String> },
    /// Redis (`[redis]`, `on_unavailable = "refuse"`) cannot be reached: a revocation made on
    /// another gateway could be missed, so sessions and sign-ins fail closed.
    #[error("shared session state (Redis) unreachable")]
    SharedStateUnavailable,

    // The gateway's side.
    /// The route is closed by configuration (`access = "deny"`).
    #[error("route closed by configuration")]
    Denied,
    /// The client address (after `trusted_proxies`) is outside the route's `allow_from`.
    #[error("client address outside the route's allow_from")]
    SourceNotAllowed,
    /// Exchange's forms logon names another account than the signed-in user (or cannot be
    /// read): the password is not forwarded. `allowed` is the account this session may open.
    #[error("forms logon refused: {}", .why.as_str())]
    FormsLogonRefused {
        why: FormsLogonRefusal,
        allowed: Option<String>,
    },
    /// Signed in, but the route's policy (group membership) refuses the user.
    #[error("signed-in user refused by the route's policy: {0}")]
    PolicyDenied(DenialReason),
    /// `/_gateway/wsfed/` issued no token for Exchange: a malformed request or a realm this
    /// gateway does not publish (the browser's side), a session without the claims Exchange
    /// needs (Entra's), or signing failed (the gateway's).
    #[error("no token for Exchange: {}", .0.as_str())]
    SsoRefused(WsFedRefusal),
    /// `sso = "kerberos"`: no Kerberos ticket for the user (the KDC refused or could not be
    /// reached; the request was not sent), or Exchange refused the ticket or did not prove
    /// itself in its answer.
    #[error("kerberos single sign-on failed: {0}")]
    Kerberos(KerberosError),
    /// Something the gateway needs failed (random numbers, sealing).
    #[error("internal failure: {0}")]
    Internal(&'static str),

    // Exchange's side.
    /// Every server of the upstream is marked down.
    #[error("no healthy upstream server")]
    NoHealthyServer,
    /// Connecting to an Exchange server failed (refused, TLS failure, connect timeout).
    #[error("cannot connect to upstream: {0}")]
    UpstreamConnect(String),
    /// Exchange accepted the request but did not answer in time.
    #[error("upstream did not answer within idle_timeout")]
    UpstreamTimeout,
    /// Exchange broke the connection or answered with something that is not HTTP.
    #[error("upstream failed: {0}")]
    UpstreamProtocol(String),
}

/// The page for a refused request to `/_gateway/wsfed/`: for a session without the claims
/// Exchange needs, the claim is named, so the help desk knows what the administrator must add.
fn sso_refused_page(refusal: WsFedRefusal) -> Page {
    match refusal {
        WsFedRefusal::OnPremSidMissing => Page::new(
            "Your mailbox cannot be opened from here",
            "You are signed in, but Microsoft Entra ID did not send your account's on-premises security identifier (the optional claim onprem_sid), which Exchange needs to open your mailbox. Your administrator must add the optional claim onprem_sid to the ID token of this site's app registration; it is sent only for accounts synchronised from Active Directory.",
        ),
        WsFedRefusal::UpnMissing => Page::new(
            "Your mailbox cannot be opened from here",
            "You are signed in, but Microsoft Entra ID did not send your account's user principal name (the claim upn), which Exchange needs to open your mailbox. Contact your administrator.",
        ),
        WsFedRefusal::RealmNotPublished | WsFedRefusal::ReplyNotRealm => Page::new(
            "Sign-in not available for this address",
            "This site signs you in only to the mail pages it publishes itself. Start again from Outlook on the web.",
        ),
        WsFedRefusal::SigningFailed => Page::new(
            "Something went wrong",
            "The sign-in to your mailbox could not be completed. Try again; if it keeps happening, contact your help desk.",
        ),
        WsFedRefusal::UnknownAction
        | WsFedRefusal::RealmMissing
        | WsFedRefusal::RepeatedParameter
        | WsFedRefusal::ParameterTooLong => Page::new(
            "Bad request",
            "Your browser sent a sign-in request this site cannot accept. Start again from Outlook on the web.",
        ),
    }
}

impl GatewayError {
    pub fn side(&self) -> Side {
        match self {
            GatewayError::NoRoute
            | GatewayError::BadPath
            | GatewayError::BadRequest(_)
            | GatewayError::MethodNotAllowed
            | GatewayError::HeadersTooLarge
            | GatewayError::BodyTooLarge
            | GatewayError::BodyTimeout
            | GatewayError::ConnectionBusy
            | GatewayError::DownstreamAborted(_)
            | GatewayError::SignInRequired { .. }
            | GatewayError::SignInState { .. } => Side::Downstream,
            GatewayError::SsoRefused(refusal) => match refusal {
                WsFedRefusal::OnPremSidMissing | WsFedRefusal::UpnMissing => Side::IdentityProvider,
                WsFedRefusal::SigningFailed => Side::Gateway,
                _ => Side::Downstream,
            },
            GatewayError::SignInNotCompleted { .. }
            | GatewayError::CodeExchangeRefused { .. }
            | GatewayError::TokenRefused { .. }
            | GatewayError::IdentityProviderUnavailable { .. } => Side::IdentityProvider,
            GatewayError::Denied
            | GatewayError::SourceNotAllowed
            | GatewayError::FormsLogonRefused { .. }
            | GatewayError::PolicyDenied(_)
            | GatewayError::SharedStateUnavailable
            | GatewayError::Internal(_) => Side::Gateway,
            GatewayError::Kerberos(error) => match error.reason {
                KerberosReason::MutualAuthFailed | KerberosReason::TicketRefused => Side::Upstream,
                _ => Side::Gateway,
            },
            GatewayError::NoHealthyServer
            | GatewayError::UpstreamConnect(_)
            | GatewayError::UpstreamTimeout
            | GatewayError::UpstreamProtocol(_) => Side::Upstream,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NoRoute => StatusCode::NOT_FOUND,
            GatewayError::BadPath
            | GatewayError::BadRequest(_)
            | GatewayError::DownstreamAborted(_)
            | GatewayError::SignInState { .. } => StatusCode::BAD_REQUEST,
            GatewayError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::ConnectionBusy => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::SignInRequired { status, .. } => *status,
            GatewayError::SignInNotCompleted { .. } => StatusCode::FORBIDDEN,
            GatewayError::CodeExchangeRefused { .. } => StatusCode::BAD_GATEWAY,
            GatewayError::TokenRefused { refusal, .. } => match refusal {
                Refusal::NoMfa | Refusal::AuthTooOld | Refusal::WrongTenant => {
                    StatusCode::FORBIDDEN
                }
                _ => StatusCode::UNAUTHORIZED,
            },
            GatewayError::IdentityProviderUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Denied
            | GatewayError::SourceNotAllowed
            | GatewayError::FormsLogonRefused { .. }
            | GatewayError::PolicyDenied(_) => StatusCode::FORBIDDEN,
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::Kerberos(error) => match error.reason {
                KerberosReason::UserNotFound
                | KerberosReason::AccountDisabled
                | KerberosReason::AccountSensitive
                | KerberosReason::DelegationNotAllowed => StatusCode::FORBIDDEN,
                KerberosReason::KdcUnreachable => StatusCode::SERVICE_UNAVAILABLE,
                KerberosReason::MutualAuthFailed | KerberosReason::TicketRefused => {
                    StatusCode::BAD_GATEWAY
                }
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            GatewayError::SharedStateUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::SsoRefused(refusal) => match refusal {
                WsFedRefusal::SigningFailed => StatusCode::INTERNAL_SERVER_ERROR,
                WsFedRefusal::RealmNotPublished
                | WsFedRefusal::ReplyNotRealm
                | WsFedRefusal::OnPremSidMissing
                | WsFedRefusal::UpnMissing => StatusCode::FORBIDDEN,
                _ => StatusCode::BAD_REQUEST,
            },
            GatewayError::NoHealthyServer
            | GatewayError::UpstreamConnect(_)
            | GatewayError::UpstreamProtocol(_) => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// A short stable label for logs, audit events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            GatewayError::NoRoute => "no_route",
            GatewayError::BadPath => "bad_path",
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::MethodNotAllowed => "method_not_allowed",
            GatewayError::HeadersTooLarge => "headers_too_large",
            GatewayError::BodyTooLarge => "body_too_large",
            GatewayError::BodyTimeout => "body_timeout",
            GatewayError::ConnectionBusy => "connection_busy",
            GatewayError::DownstreamAborted(_) => "browser_aborted",
            GatewayError::SignInRequired { why, .. } => why.as_str(),
            GatewayError::SignInState { problem, .. } => problem.as_str(),
            GatewayError::SignInNotCompleted { .. } => "idp_error",
            GatewayError::CodeExchangeRefused { .. } => "code_exchange_refused",
            GatewayError::TokenRefused { refusal, .. } => refusal.reason(),
            GatewayError::IdentityProviderUnavailable { .. } => "idp_unavailable",
            GatewayError::Denied => "denied",
            GatewayError::SourceNotAllowed => "source_not_allowed",
            GatewayError::FormsLogonRefused { why, .. } => why.as_str(),
            GatewayError::PolicyDenied(why) => why.as_str(),
            GatewayError::Internal(_) => "internal",
            GatewayError::Kerberos(error) => error.reason.as_str(),
            GatewayError::SharedStateUnavailable => "shared_state_unavailable",
            GatewayError::SsoRefused(refusal) => refusal.as_str(),
            GatewayError::NoHealthyServer => "no_healthy_server",
            GatewayError::UpstreamConnect(_) => "upstream_connect",
            GatewayError::UpstreamTimeout => "upstream_timeout",
            GatewayError::UpstreamProtocol(_) => "upstream_protocol",
        }
    }

    /// The page shown to the person in front of the browser: what happened, never internals
    /// (no server names, no error strings from Exchange). After a refused sign-in the page
    /// offers a fresh one (`prompt=login`) that returns to the page asked for, never a loop.
    pub fn page(&self) -> Page {
        match self {
            GatewayError::NoRoute => Page::new(
                "Page not found",
                "There is nothing published at this address. Check the link, or start again from Outlook on the web.",
            ),
            GatewayError::BadPath
            | GatewayError::BadRequest(_)
            | GatewayError::DownstreamAborted(_) => Page::new(
                "Bad request",
                "Your browser sent a request this site cannot accept. Start again from Outlook on the web.",
            ),
            GatewayError::MethodNotAllowed => Page::new(
                "Bad request",
                "This address does not accept this kind of request.",
            ),
            GatewayError::HeadersTooLarge => Page::new(
                "Request too large",
                "Your browser sent more cookies or headers than this site accepts. Clear this site's cookies and start again from Outlook on the web.",
            ),
            GatewayError::BodyTooLarge => Page::new(
                "Upload too large",
                "The file or message you sent is larger than this site accepts.",
            ),
            GatewayError::BodyTimeout | GatewayError::ConnectionBusy => Page::new(
                "Request not completed",
                "Your browser did not finish sending its request in time. Start again from Outlook on the web.",
            ),
            GatewayError::SignInRequired { .. } => Page::new(
                "Sign-in required",
                "Your session has ended. Reload the page to sign in again.",
            ),
            GatewayError::SignInState { return_path, .. } => Page::new(
                "This sign-in link has expired",
                "The sign-in could not be matched to this browser: it may have taken too long, been used already, or been started in another browser. Start again.",
            )
            .with_link("Sign in again", sign_in_again_link(return_path)),
            GatewayError::SignInNotCompleted {
                code,
                description,
                return_path,
            } => Page::owned(
                "Sign-in was not completed",
                format!("Microsoft Entra ID did not complete the sign-in ({code}). {description}"),
            )
            .with_link("Sign in again", sign_in_again_link(return_path)),
            GatewayError::CodeExchangeRefused { return_path } => Page::new(
                "Sign-in could not be completed",
                "Microsoft Entra ID refused to complete this sign-in. Sign in again; if it keeps happening, contact your help desk.",
            )
            .with_link("Sign in again", sign_in_again_link(return_path)),
            GatewayError::TokenRefused {
                refusal,
                return_path,
            } => token_refused_page(*refusal)
                .with_link("Sign in again", sign_in_again_link(return_path)),
            GatewayError::IdentityProviderUnavailable { return_path: None } => Page::new(
                "Sign-in is unavailable",
                "Microsoft Entra ID cannot be reached right now, so new sign-ins cannot start. Try again in a few minutes; if you are already signed in, your session keeps working.",
            ),
            GatewayError::IdentityProviderUnavailable {
                return_path: Some(return_path),
            } => Page::new(
                "Sign-in is unavailable",
                "Microsoft Entra ID cannot be reached right now, so new sign-ins cannot complete. Try again in a few minutes.",
            )
            .with_link("Try again", return_path.clone()),
            GatewayError::Denied => Page::new(
                "Access denied",
                "This part of the site is not available from outside the organisation.",
            ),
            GatewayError::SourceNotAllowed => Page::new(
                "Access denied",
                "This part of the site is not available from the network you are connecting from.",
            ),
            GatewayError::FormsLogonRefused { why, allowed } => forms_logon_page(*why, allowed.as_deref()),
            GatewayError::PolicyDenied(DenialReason::GroupsOverage) => Page::new(
                "Group membership could not be checked",
                "Your account is a member of more groups than Microsoft Entra ID lists in a sign-in, so the membership this page requires could not be checked. Ask your administrator to grant access another way.",
            ),
            GatewayError::PolicyDenied(DenialReason::NotInGroup) => Page::new(
                "You do not have access to this page",
                "You are signed in, but your account is not allowed to use this part of the site. If you need it, ask your administrator.",
            ),
            GatewayError::SharedStateUnavailable => Page::new(
                "Sign-in is unavailable",
                "The gateway cannot reach the session store it shares with the other gateways, so it cannot check whether your session was ended elsewhere. Try again in a few minutes.",
            ),
            GatewayError::Internal(_) => Page::new(
                "Something went wrong",
                "The request could not be completed. Try again.",
            ),
            GatewayError::SsoRefused(refusal) => sso_refused_page(*refusal),
            GatewayError::Kerberos(error) => kerberos_page(error.reason),
            GatewayError::NoHealthyServer
            | GatewayError::UpstreamConnect(_)
            | GatewayError::UpstreamProtocol(_) => Page::new(
                "Mail server unavailable",
                "The mail servers cannot be reached right now. Try again in a few minutes; if it persists, contact your help desk.",
            ),
            GatewayError::UpstreamTimeout => Page::new(
                "Mail server did not answer",
                "The mail server took too long to answer. Try again in a few minutes.",
            ),
        }
    }

    /// The complete answer: the page with the status (and, for 440, IIS's reason phrase).
    pub fn response(&self) -> Response<ResponseBody> {
        let status = self.status();
        let mut response = self.page().response(status);
        if status.as_u16() == 440 {
            // 440 has no standard reason phrase; IIS calls it "Login Time-out".
            response
                .extensions_mut()
                .insert(hyper::ext::ReasonPhrase::from_static(b"Login Time-out"));
        }
        response
    }

    /// A sign-in answer that cannot be matched, offering a fresh sign-in to OWA.
    pub fn sign_in_state(problem: StateProblem) -> GatewayError {
        GatewayError::SignInState {
            problem,
            return_path: DEFAULT_RETURN.to_owned(),
        }
    }
}

/// The page for a Kerberos sign-in to Exchange that failed. The reason is named at the end, as
/// the audit log names it, so the help desk finds the event and the administrator's table
/// (docs/deployment.md, 13.9) at once; never the KDC's or Exchange's own words.
fn kerberos_page(reason: KerberosReason) -> Page {
    let (title, text) = match reason {
        KerberosReason::UserNotFound | KerberosReason::AccountDisabled => (
            "Your mailbox cannot be opened from here",
            "You are signed in, but your account could not be found, or is not enabled, in the organisation's directory under the name Microsoft Entra ID gave for it, so the mail server cannot sign you in. Contact your help desk.",
        ),
        KerberosReason::AccountSensitive | KerberosReason::DelegationNotAllowed => (
            "Your mailbox cannot be opened from here",
            "You are signed in, but this site is not allowed to sign your account in to the mail server. Accounts protected from delegation, such as administrator accounts, cannot be used from outside the organisation. Contact your help desk if you need access.",
        ),
        KerberosReason::KdcUnreachable => (
            "Mail sign-in is unavailable",
            "The organisation's sign-in servers cannot be reached right now, so the mail server cannot sign you in. Try again in a few minutes.",
        ),
        KerberosReason::MutualAuthFailed | KerberosReason::TicketRefused => (
            "Mail server sign-in failed",
            "The mail server did not accept the sign-in this site made for you. Try again in a few minutes; if it keeps happening, contact your help desk.",
        ),
        _ => (
            "Mail sign-in failed",
            "This site could not sign you in to the mail server. Try again; if it keeps happening, contact your help desk.",
        ),
    };
    Page::owned(
        title,
        format!("{text} (Reference for the help desk: kerberos {reason}.)"),
    )
}

/// The page for a refused forms logon: which account this session may open, so the user who
/// typed another name knows what to do.
fn forms_logon_page(why: FormsLogonRefusal, allowed: Option<&str>) -> Page {
    let allowed = match allowed {
        Some(upn) => format!(
            "After your sign-in on this browser you can open only the mailbox of {upn}. Sign in to the mail server with that account; to open another mailbox, sign out and sign in again as its owner."
        ),
        None => "Microsoft Entra ID did not name your account (the claim upn) in this sign-in, so the mail server's logon cannot be matched to it. Contact your administrator.".to_owned(),
    };
    match why {
        FormsLogonRefusal::OtherAccount => Page::owned("This is not your account", allowed),
        FormsLogonRefusal::Unreadable => Page::owned(
            "Logon not accepted",
            format!("Your browser sent a logon this site cannot read. {allowed}"),
        ),
    }
}

fn token_refused_page(refusal: Refusal) -> Page {
    match refusal {
        Refusal::NoMfa => Page::new(
            "Multifactor authentication required",
            "This sign-in did not include multifactor authentication, which is required to reach your mailbox from outside the organisation. Sign in again and complete the multifactor step (for example the Authenticator app prompt).",
        ),
        Refusal::AuthTooOld => Page::new(
            "Sign in again",
            "Your sign-in is too old for this page. Sign in again to continue.",
        ),
        Refusal::WrongTenant => Page::new(
            "Account not allowed",
            "This account belongs to an organisation that may not use this site.",
        ),
        _ => Page::new(
            "Sign-in could not be verified",
            "The answer from Microsoft Entra ID could not be verified, so you were not signed in. Sign in again; if it keeps happening, contact your help desk.",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_side_has_its_own_label() {
        let labels: Vec<&str> = [
            GatewayError::BadPath,
            GatewayError::UpstreamTimeout,
            GatewayError::IdentityProviderUnavailable { return_path: None },
            GatewayError::Denied,
        ]
        .iter()
        .map(|e| e.side().as_str())
        .collect();
        assert_eq!(labels, ["browser", "exchange", "entra", "gateway"]);
    }

    #[test]
    fn a_refused_sign_in_offers_a_fresh_one_back_to_the_page_asked_for() {
        let error = GatewayError::TokenRefused {
            refusal: Refusal::NoMfa,
            return_path: "/ecp/?rfr=owa".into(),
        };
        assert_eq!(error.status(), StatusCode::FORBIDDEN);
        assert_eq!(error.reason(), "no_mfa");
        let page = error.page();
        assert!(page.title.contains("Multifactor"));
        assert_eq!(
            page.link.map(|(_, href)| href),
            Some("/_gateway/sign-in?return=%2Fecp%2F%3Frfr%3Dowa".to_owned())
        );
    }

    #[test]
    fn a_script_without_a_session_on_owa_gets_440_login_time_out() {
        let error = GatewayError::SignInRequired {
            status: StatusCode::from_u16(440).expect("a status"),
            why: SignInReason::Expired(crate::session::SessionExpired::Idle),
        };
        let response = error.response();
        assert_eq!(response.status().as_u16(), 440);
        assert_eq!(
            response
                .extensions()
                .get::<hyper::ext::ReasonPhrase>()
                .map(|r| r.as_bytes()),
            Some(&b"Login Time-out"[..])
        );
        assert_eq!(error.reason(), "session_idle");
    }

    #[test]
    fn pages_never_show_exchange_error_text() {
        let error = GatewayError::UpstreamConnect("tcp connect error to ex01.corp:443".into());
        let html = error.page().render(error.status());
        assert!(!html.contains("ex01"));
        assert!(error.to_string().contains("ex01"), "the log line keeps it");
    }

    #[test]
    fn kerberos_failures_name_their_reason_and_side_and_never_the_kdc_s_words() {
        let failure = |reason| {
            GatewayError::Kerberos(KerberosError::new(
                reason,
                "S4U2Proxy: KDC can't fulfill requested option at dc01.corp".into(),
            ))
        };
        for (reason, status, side) in [
            (KerberosReason::DelegationNotAllowed, 403, Side::Gateway),
            (KerberosReason::AccountSensitive, 403, Side::Gateway),
            (KerberosReason::UserNotFound, 403, Side::Gateway),
            (KerberosReason::KdcUnreachable, 503, Side::Gateway),
            (KerberosReason::MutualAuthFailed, 502, Side::Upstream),
            (KerberosReason::TicketRefused, 502, Side::Upstream),
            (KerberosReason::GatewayCredentials, 500, Side::Gateway),
        ] {
            let error = failure(reason);
            assert_eq!(error.status().as_u16(), status, "{reason}");
            assert_eq!(error.side(), side, "{reason}");
            assert_eq!(error.reason(), reason.as_str());
            let html = error.page().render(error.status());
            assert!(html.contains(&format!("kerberos {reason}")), "{html}");
            assert!(!html.contains("dc01"), "{html}");
            assert!(error.to_string().contains("dc01"), "the log line keeps it");
        }
    }
}
