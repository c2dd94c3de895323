//! Exchange's forms logon bound to the gateway's sign-in (`bind_forms_logon`).
//!
//! With Exchange on forms authentication, OWA's and ECP's logon page (`/owa/auth/logon.aspx`)
//! posts `destination`, `flags`, `forcedownlevel`, `username`, `password`, `passwordText` and
//! `isUtf8` to `/owa/auth.owa`, and Exchange signs in whichever account the form names. Without
//! this check, anyone who passed MFA at the gateway could open any mailbox whose password they
//! know. The form is small: it is read whole (with the cap and deadline of the gateway's own
//! bodies), judged, and forwarded byte for byte only when `username` names the signed-in user;
//! otherwise Exchange never receives the password.

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::{Method, Request};
use hyper::body::Incoming;

use super::endpoints::{read_gateway_body, MAX_GATEWAY_BODY};
use crate::auth::RequestContext;
use crate::config::{OidcConfig, ServerConfig};
use crate::error::{FormsLogonRefusal, GatewayError};
use crate::proxy::BrowserBody;
use crate::server::{Connection, RouteEntry};
use crate::session::Session;

/// Where Exchange 2019's logon form posts, for OWA and ECP alike.
const EXCHANGE_LOGON_PATH: &str = "/owa/auth.owa";

/// Whether `request` is Exchange's forms logon on a route that binds it. Judged on the path as
/// IIS resolves it (`/owa//auth.owa`, `/OWA/%61uth.owa`, `/owa/auth.owa.` are all the logon),
/// with anything after it (IIS's path info) included. GET and HEAD carry no form: Exchange
/// answers them with a redirect to the logon page.
pub(super) fn is_bound_logon(request: &Request<Incoming>, entry: &RouteEntry) -> bool {
    let Some(route_logon) = &entry.forms_logon_path else {
        return false;
    };
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return false;
    }
    let Ok(path) = crate::routing::normalize_path(request.uri().path()) else {
        return false;
    };
    let path = path.to_ascii_lowercase();
    [EXCHANGE_LOGON_PATH, route_logon.as_str()]
        .iter()
        .any(|logon| match path.strip_prefix(logon) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        })
}

/// Who a session may sign in to Exchange as.
pub(super) struct AccountNames<'a> {
    pub upn: Option<&'a str>,
    /// The on-premises account name (sAMAccountName), when `oidc.account_name_claim` is set.
    pub account: Option<&'a str>,
    /// `oidc.account_domains`: the domains accepted in `DOMAIN\name`.
    pub domains: &'a [String],
}

impl<'a> AccountNames<'a> {
    pub(super) fn of(session: &'a Session, oidc: Option<&'a OidcConfig>) -> AccountNames<'a> {
        AccountNames {
            upn: session.upn.as_deref(),
            account: session.account_name.as_deref(),
            domains: oidc.map_or(&[], |oidc| &oidc.account_domains),
        }
    }

    /// Whether `username` names this user in one of Exchange's logon formats: the UPN, or —
    /// with the account name known — `DOMAIN\name` for a listed domain, or the bare name
    /// (which Exchange completes with its default domain). Letter case is ignored for ASCII
    /// letters only, as a refusal is the safe side for names Unicode case folding might
    /// join.
    pub(super) fn allow(&self, username: &str) -> bool {
        let username = username.trim_matches(|c: char| c.is_ascii_whitespace());
        if username.is_empty() {
            return false;
        }
        if self
            .upn
            .is_some_and(|upn| username.eq_ignore_ascii_case(upn))
        {
            return true;
        }
        let Some(account) = self.account else {
            return false;
        };
        match username.split_once('\\') {
            Some((domain, name)) => {
                self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
                    && name.eq_ignore_ascii_case(account)
            }
            None => username.eq_ignore_ascii_case(account),
        }
    }
}

/// Reads the logon form and lets it through only for the signed-in user: the request rebuilt
/// with the same bytes, or the refusal (with its audit event).
pub(super) async fn bind(
    request: Request<Incoming>,
    session: &Session,
    entry: &RouteEntry,
    oidc: Option<&OidcConfig>,
    server: &ServerConfig,
    connection: &Connection,
    ctx: &RequestContext<'_>,
) -> Result<Request<BrowserBody>, GatewayError> {
    let names = AccountNames::of(session, oidc);
    let refuse = |why: FormsLogonRefusal, attempted: Option<&str>| {
        crate::observe::audit::forms_logon_refused(
            why.as_str(),
            attempted,
            &session.oid.to_string(),
            session.upn.as_deref(),
            &entry.metrics.name,
            ctx.client,
            ctx.host,
        );
        GatewayError::FormsLogonRefused {
            why,
            allowed: session.upn.clone(),
        }
    };
    let (parts, body) = request.into_parts();
    let body = match read_gateway_body(&parts, body, connection, server, MAX_GATEWAY_BODY).await {
        Ok(body) => body,
        Err(error) => {
            // Too large, too slow: nothing is forwarded; the audit says a logon was refused.
            crate::observe::audit::forms_logon_refused(
                error.reason(),
                None,
                &session.oid.to_string(),
                session.upn.as_deref(),
                &entry.metrics.name,
                ctx.client,
                ctx.host,
            );
            return Err(error);
        }
    };
    let username = match logon_username(&parts, &body) {
        Ok(username) => username,
        Err(()) => return Err(refuse(FormsLogonRefusal::Unreadable, None)),
    };
    if !names.allow(&username) {
        return Err(refuse(FormsLogonRefusal::OtherAccount, Some(&username)));
    }
    Ok(Request::from_parts(parts, BrowserBody::Read(body)))
}

/// The one `username` Exchange will read from this form, or `Err` when that cannot be known
/// for certain: not a URL-encoded form, an encoding or a charset only IIS would decode, a
/// field name ASP.NET might read as `username` (its form keys compare without regard to case,
/// Unicode included), `username` missing or repeated (ASP.NET would join the values with a
/// comma), or a `username` in the query string (which `Request["username"]` reads first).
fn logon_username(parts: &http::request::Parts, body: &Bytes) -> Result<String, ()> {
    if parts.headers.contains_key(CONTENT_ENCODING) {
        return Err(());
    }
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or(())?;
    let mut params = content_type.split(';').map(str::trim);
    if !params
        .next()
        .is_some_and(|kind| kind.eq_ignore_ascii_case("application/x-www-form-urlencoded"))
    {
        return Err(());
    }
    for param in params {
        if let Some((name, value)) = param.split_once('=') {
            let value = value.trim().trim_matches('"');
            if name.trim().eq_ignore_ascii_case("charset") && !value.eq_ignore_ascii_case("utf-8") {
                return Err(());
            }
        }
    }
    if let Some(query) = parts.uri.query() {
        if names_username(query.as_bytes())? > 0 {
            return Err(());
        }
    }
    if names_username(body)? != 1 {
        return Err(());
    }
    url::form_urlencoded::parse(body)
        .find(|(name, _)| name.eq_ignore_ascii_case("username"))
        .map(|(_, value)| value.into_owned())
        .ok_or(())
}

/// How many fields of a URL-encoded text are named `username`; `Err` for IIS's `%uXXXX`
/// escapes (which only ASP.NET decodes) and for names that are not plain ASCII (which ASP.NET
/// might fold into `username`). Browsers write neither: a `%` of the text itself is `%25`.
fn names_username(encoded: &[u8]) -> Result<usize, ()> {
    if encoded
        .windows(2)
        .any(|pair| pair[0] == b'%' && pair[1].eq_ignore_ascii_case(&b'u'))
    {
        return Err(());
    }
    let mut count = 0;
    for (name, _) in url::form_urlencoded::parse(encoded) {
        if !name.is_ascii() {
            return Err(());
        }
        if name.eq_ignore_ascii_case("username") {
            count += 1;
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(body: &str) -> Result<String, ()> {
        form_with("application/x-www-form-urlencoded", "/owa/auth.owa", body)
    }

    fn form_with(content_type: &str, target: &str, body: &str) -> Result<String, ()> {
        let (parts, ()) = Request::post(target)
            .header(CONTENT_TYPE, content_type)
            .body(())
            .expect("a request")
            .into_parts();
        logon_username(&parts, &Bytes::copy_from_slice(body.as_bytes()))
    }

    const OWA_FORM: &str = "destination=https%3A%2F%2Fmail.contoso.com%2Fowa%2F&flags=4&forcedownlevel=0&username=CONTOSO%5Calice&password=p%25u0041ss&passwordText=&isUtf8=1";

    #[test]
    fn the_username_of_owas_logon_form_is_read() {
        assert_eq!(form(OWA_FORM).as_deref(), Ok("CONTOSO\\alice"));
        assert_eq!(
            form_with(
                "application/x-www-form-urlencoded; charset=UTF-8",
                "/owa/auth.owa",
                "UserName=alice%40contoso.com&password=x"
            )
            .as_deref(),
            Ok("alice@contoso.com")
        );
    }

    #[test]
    fn a_form_whose_username_exchange_might_read_otherwise_is_unreadable() {
        for body in [
            "password=x",
            "username=alice&username=bob",
            "username=alice&USERNAME=bob",
            "username=%u0062ob",
            "%u0075sername=bob&username=alice",
            "u%C5%BFername=bob&username=alice",
        ] {
            assert_eq!(form(body), Err(()), "{body}");
        }
        assert_eq!(
            form_with(
                "multipart/form-data; boundary=x",
                "/owa/auth.owa",
                "username=alice"
            ),
            Err(())
        );
        assert_eq!(
            form_with(
                "application/x-www-form-urlencoded; charset=utf-16",
                "/owa/auth.owa",
                "username=alice"
            ),
            Err(())
        );
        assert_eq!(
            form_with(
                "application/x-www-form-urlencoded",
                "/owa/auth.owa?username=bob",
                "username=alice"
            ),
            Err(())
        );
    }

    #[test]
    fn the_upn_is_accepted_in_any_ascii_case_and_nothing_else_without_the_account_name() {
        let names = AccountNames {
            upn: Some("alice@contoso.com"),
            account: None,
            domains: &[],
        };
        assert!(names.allow("alice@contoso.com"));
        assert!(names.allow("Alice@CONTOSO.com "));
        for other in [
            "bob@contoso.com",
            "alice",
            "CONTOSO\\alice",
            "",
            "alice@contoso.com.evil",
        ] {
            assert!(!names.allow(other), "{other}");
        }
    }

    #[test]
    fn domain_and_bare_account_names_are_accepted_with_the_account_name_claim() {
        let domains = ["CONTOSO".to_owned(), "corp.contoso.com".to_owned()];
        let names = AccountNames {
            upn: Some("alice@contoso.com"),
            account: Some("alice"),
            domains: &domains,
        };
        for own in [
            "alice",
            "ALICE",
            "contoso\\alice",
            "CORP.contoso.com\\Alice",
        ] {
            assert!(names.allow(own), "{own}");
        }
        for other in [
            "bob",
            "CONTOSO\\bob",
            "FABRIKAM\\alice",
            "CONTOSO\\alice\\x",
            "\\alice",
        ] {
            assert!(!names.allow(other), "{other}");
        }
    }
}
