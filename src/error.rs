//! One error type for everything that can go wrong while serving a request, labelled with the
//! side that failed. The label decides the status code, the page, the log line and the metric in
//! one place ([`GatewayError::status`], [`GatewayError::page`], [`GatewayError::reason`]), so an
//! administrator reading a log line knows at once whether to look at the browser, at Exchange or
//! at the gateway.

use std::fmt;

use http::StatusCode;

use crate::pages::Page;
use crate::policy::DenialReason;

/// Which side of the gateway a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The browser (or whatever sent the request) sent something unacceptable.
    Downstream,
    /// An Exchange server failed, refused or timed out.
    Upstream,
    /// The gateway's own policy or state (not ready, draining, denied by configuration).
    Gateway,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Downstream => "browser",
            Side::Upstream => "exchange",
            Side::Gateway => "gateway",
        }
    }
}

#[derive(Debug)]
pub enum GatewayError {
    /// No route publishes this host and path.
    NoRoute,
    /// The path cannot be normalised the way IIS would (double escaping, control bytes, …).
    BadPath,
    /// The request line or headers are unacceptable (missing Host, smuggling attempt, …).
    BadRequest(&'static str),
    /// The request head is larger than `server.max_header_bytes`.
    HeadersTooLarge,
    /// The request body is larger than the upstream's `max_request_body` (or, for a body the
    /// gateway reads itself, than its small cap).
    BodyTooLarge,
    /// The request body stalled: a body the gateway reads itself did not arrive within
    /// `header_read_timeout`, or one on its way to Exchange paused for `request_body_timeout`.
    BodyTimeout,
    /// Too many bodies the gateway reads itself are in progress on this connection.
    ConnectionBusy,
    /// The browser's connection failed while its request body was being forwarded.
    DownstreamAborted(String),
    /// The route is closed by configuration (`access = "deny"`).
    Denied,
    /// Signed in, but the route's policy (group membership) refuses the user; the reason code
    /// says why (`not_in_group`, `groups_overage`).
    PolicyDenied(DenialReason),
    /// The gateway is not ready or is shutting down.
    NotReady,
    /// Every server of the upstream is marked down.
    NoHealthyServer,
    /// Connecting to an Exchange server failed (refused, TLS failure, connect timeout).
    UpstreamConnect(String),
    /// Exchange accepted the request but did not answer in time.
    UpstreamTimeout,
    /// Exchange broke the connection or answered with something that is not HTTP.
    UpstreamProtocol(String),
}

impl GatewayError {
    pub fn side(&self) -> Side {
        match self {
            GatewayError::NoRoute
            | GatewayError::BadPath
            | GatewayError::BadRequest(_)
            | GatewayError::HeadersTooLarge
            | GatewayError::BodyTooLarge
            | GatewayError::BodyTimeout
            | GatewayError::ConnectionBusy
            | GatewayError::DownstreamAborted(_) => Side::Downstream,
            GatewayError::Denied | GatewayError::PolicyDenied(_) | GatewayError::NotReady => {
                Side::Gateway
            }
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
            | GatewayError::DownstreamAborted(_) => StatusCode::BAD_REQUEST,
            GatewayError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::ConnectionBusy => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Denied | GatewayError::PolicyDenied(_) => StatusCode::FORBIDDEN,
            GatewayError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::NoHealthyServer
            | GatewayError::UpstreamConnect(_)
            | GatewayError::UpstreamProtocol(_) => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// A short stable label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            GatewayError::NoRoute => "no_route",
            GatewayError::BadPath => "bad_path",
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::HeadersTooLarge => "headers_too_large",
            GatewayError::BodyTooLarge => "body_too_large",
            GatewayError::BodyTimeout => "body_timeout",
            GatewayError::ConnectionBusy => "connection_busy",
            GatewayError::DownstreamAborted(_) => "browser_aborted",
            GatewayError::Denied => "denied",
            GatewayError::PolicyDenied(why) => why.as_str(),
            GatewayError::NotReady => "not_ready",
            GatewayError::NoHealthyServer => "no_healthy_server",
            GatewayError::UpstreamConnect(_) => "upstream_connect",
            GatewayError::UpstreamTimeout => "upstream_timeout",
            GatewayError::UpstreamProtocol(_) => "upstream_protocol",
        }
    }

    /// The page shown to the person in front of the browser: what happened, never internals
    /// (no server names, no error strings from Exchange).
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
            GatewayError::Denied => Page::new(
                "Access denied",
                "This part of the site is not available from outside the organisation.",
            ),
            GatewayError::PolicyDenied(DenialReason::GroupsOverage) => Page::new(
                "Group membership could not be checked",
                "Your account is a member of more groups than Microsoft Entra ID lists in a sign-in, so the membership this page requires could not be checked. Ask your administrator to grant access another way.",
            ),
            GatewayError::PolicyDenied(_) => Page::new(
                "You do not have access to this page",
                "You are signed in, but your account is not allowed to use this part of the site. If you need it, ask your administrator.",
            ),
            GatewayError::NotReady => Page::new(
                "Service unavailable",
                "The mail service is starting up or being restarted. Try again in a minute.",
            ),
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
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GatewayError::NoRoute => f.write_str("no route for this host and path"),
            GatewayError::BadPath => f.write_str("path cannot be normalised"),
            GatewayError::BadRequest(why) => write!(f, "bad request: {why}"),
            GatewayError::HeadersTooLarge => {
                f.write_str("request head larger than server.max_header_bytes")
            }
            GatewayError::BodyTooLarge => f.write_str("request body larger than accepted"),
            GatewayError::BodyTimeout => f.write_str("request body not received in time"),
            GatewayError::ConnectionBusy => {
                f.write_str("too many gateway-read request bodies in progress on one connection")
            }
            GatewayError::DownstreamAborted(e) => {
                write!(f, "browser connection failed during upload: {e}")
            }
            GatewayError::Denied => f.write_str("route closed by configuration"),
            GatewayError::PolicyDenied(why) => {
                write!(f, "signed-in user refused by the route's policy: {why}")
            }
            GatewayError::NotReady => f.write_str("gateway not ready"),
            GatewayError::NoHealthyServer => f.write_str("no healthy upstream server"),
            GatewayError::UpstreamConnect(e) => write!(f, "cannot connect to upstream: {e}"),
            GatewayError::UpstreamTimeout => {
                f.write_str("upstream did not answer within idle_timeout")
            }
            GatewayError::UpstreamProtocol(e) => write!(f, "upstream failed: {e}"),
        }
    }
}

impl std::error::Error for GatewayError {}
