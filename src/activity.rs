//! Which requests are the user's activity, for the idle timeout.
//!
//! Outlook on the web keeps requests going while a tab is open and nobody touches it: the
//! notification channel's long polls (`/owa/ev.owa2?ns=PendingRequest&ev=PendingNotificationRequest`),
//! requests its script marks as not started by the user (`UA=0` in the query), keep-alive and
//! ping requests. If they counted, `idle_timeout` would never end a session whose tab is left
//! open — which is why TMG, UAG and NetScaler keep lists like this one. A background request is
//! still served while the session is live; it only does not move the idle deadline.
//!
//! An entry is `PATH` or `PATH?NAME=VALUE&NAME=VALUE`: the request's path (after IIS's
//! normalisation, any letter case) is `PATH` or lies under it (`/owa/x` matches `/owa/x` and
//! `/owa/x/y`, not `/owa/xy`; `/owa/` matches everything under `/owa/`), and its query carries
//! each `NAME=VALUE` (names and values compared without regard to case, after
//! percent-decoding, as ASP.NET reads them).

/// Exchange 2019's background requests, on every `access = "mfa"` route (each names its own
/// virtual directory, so it only matches there). Sources in docs/configuration.md.
pub const EXCHANGE_BACKGROUND_REQUESTS: &[&str] = &[
    // The notification channel: PendingNotificationRequest long polls and their set-up.
    "/owa/ev.owa2?ns=PendingRequest",
    // Any request OWA's script marks as not started by the user.
    "/owa/?UA=0",
    // OwaUrl.KeepAlive and OwaUrl.ProxyPing.
    "/owa/keepalive.owa",
    "/owa/ping.owa",
    // OwaUrl.HealthPing: ev.owa?oeh=1&ns=Monitoring&ev=Ping.
    "/owa/ev.owa?ns=Monitoring&ev=Ping",
];

/// Longest entry accepted; a longer one is a mistake, not a URL OWA sends.
const MAX_ENTRY_LEN: usize = 512;

/// One entry of a background-request list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackgroundRequest {
    /// Lower-case, as requests are compared.
    path: String,
    /// Lower-case names and values that must all be in the query.
    params: Vec<(String, String)>,
}

impl BackgroundRequest {
    /// Reads an entry; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<BackgroundRequest, String> {
        if text.len() > MAX_ENTRY_LEN {
            return Err(format!("is longer than {MAX_ENTRY_LEN} characters"));
        }
        let (path, query) = match text.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (text, None),
        };
        if !path.starts_with('/') || path.starts_with("//") {
            return Err(format!(
                "{text:?} does not start with a path such as \"/owa/custom.ashx\""
            ));
        }
        if path
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ' || b == b'#' || b == b'%' || b == b'\\')
        {
            return Err(format!(
                "the path of {text:?} must be written as requests are compared: no spaces, '%', '\\\\' or '#'"
            ));
        }
        let mut params = Vec::new();
        if let Some(query) = query {
            for pair in query.split('&') {
                match pair.split_once('=') {
                    Some((name, value)) if !name.is_empty() && !value.is_empty() => {
                        params.push((name.to_ascii_lowercase(), value.to_ascii_lowercase()));
                    }
                    _ => {
                        return Err(format!(
                            "the query of {text:?} must be NAME=VALUE pairs joined by '&' (each parameter the request must carry)"
                        ))
                    }
                }
            }
        }
        Ok(BackgroundRequest {
            path: path.to_ascii_lowercase(),
            params,
        })
    }

    /// Whether a request with this (normalised) path and raw query matches.
    pub fn matches(&self, path: &str, query: Option<&str>) -> bool {
        if !under(path, &self.path) {
            return false;
        }
        if self.params.is_empty() {
            return true;
        }
        let Some(query) = query else {
            return false;
        };
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .take(64)
            .map(|(n, v)| (n.to_ascii_lowercase(), v.to_ascii_lowercase()))
            .collect();
        self.params
            .iter()
            .all(|wanted| pairs.iter().any(|pair| pair == wanted))
    }

    /// Whether the entry could match a request on a route published at `route_path`.
    pub fn within(&self, route_path: &str) -> bool {
        let route = route_path.to_ascii_lowercase();
        under(&self.path, &route) || (self.path.ends_with('/') && under(&route, &self.path))
    }
}

/// `path` is `prefix` or lies under it at a segment boundary (case already folded on `prefix`).
fn under(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    let Some(head) = path.get(..prefix.len()) else {
        return false;
    };
    if !head.eq_ignore_ascii_case(prefix) {
        return false;
    }
    prefix.ends_with('/') || matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
}

/// The background requests of one route: Exchange's list and the route's own entries.
#[derive(Debug, Clone, Default)]
pub struct BackgroundRequests {
    entries: Vec<BackgroundRequest>,
}

impl BackgroundRequests {
    /// Exchange's list followed by `extra`.
    pub fn with_exchange_defaults(extra: &[BackgroundRequest]) -> BackgroundRequests {
        let mut entries: Vec<BackgroundRequest> = EXCHANGE_BACKGROUND_REQUESTS
            .iter()
            .filter_map(|text| BackgroundRequest::parse(text).ok())
            .collect();
        entries.extend(extra.iter().cloned());
        BackgroundRequests { entries }
    }

    /// Whether a request is background traffic, judged on its raw path (normalised here as IIS
    /// would) and query. A path that does not normalise is not background: it will be
    /// refused anyway.
    pub fn is_background(&self, raw_path: &str, query: Option<&str>) -> bool {
        let Ok(path) = crate::routing::normalize_path(raw_path) else {
            return false;
        };
        self.entries.iter().any(|entry| entry.matches(&path, query))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> BackgroundRequests {
        BackgroundRequests::with_exchange_defaults(&[])
    }

    #[test]
    fn owa_notification_polls_keepalives_and_ua0_requests_are_background() {
        let list = defaults();
        for (path, query) in [
            (
                "/owa/ev.owa2",
                Some("ns=PendingRequest&ev=PendingNotificationRequest&UA=0&cid=abc&n=96"),
            ),
            (
                "/owa/ev.owa2",
                Some("ns=PendingRequest&ev=FinishNotificationRequest"),
            ),
            ("/OWA/EV.OWA2", Some("NS=pendingrequest&ev=x")),
            (
                "/owa/service.svc",
                Some("action=GetReminders&UA=0&app=Mail"),
            ),
            ("/owa/keepalive.owa", None),
            ("/owa/ping.owa", None),
            ("/owa/ev.owa", Some("oeh=1&ns=Monitoring&ev=Ping")),
            ("/owa//ev.owa2", Some("ns=PendingRequest")),
        ] {
            assert!(list.is_background(path, query), "{path}?{query:?}");
        }
    }

    #[test]
    fn what_the_user_does_is_activity() {
        let list = defaults();
        for (path, query) in [
            ("/owa/", None),
            ("/owa/service.svc", Some("action=GetItem&UA=1")),
            ("/owa/service.svc", Some("action=FindItem")),
            ("/owa/ev.owa2", Some("ns=Other")),
            ("/owa/ev.owa2x", Some("ns=PendingRequest")),
            ("/owa/keepalive.owax", None),
            ("/owa/ev.owa", Some("ns=Monitoring&ev=Other")),
            ("/ecp/", Some("UA=0")),
            ("/owa/x", Some("UA=00")),
        ] {
            assert!(!list.is_background(path, query), "{path}?{query:?}");
        }
    }

    #[test]
    fn a_route_entry_adds_a_path_and_its_required_parameters() {
        let extra = BackgroundRequest::parse("/owa/custom.ashx?poll=1").unwrap();
        let list = BackgroundRequests::with_exchange_defaults(&[extra]);
        assert!(list.is_background("/owa/custom.ashx", Some("a=b&Poll=1")));
        assert!(list.is_background("/owa/Custom.ashx", Some("poll=%31")));
        assert!(!list.is_background("/owa/custom.ashx", Some("poll=2")));
        assert!(!list.is_background("/owa/custom.ashx", None));
        let bare = BackgroundRequest::parse("/ecp/poll").unwrap();
        assert!(bare.matches("/ecp/poll", None));
        assert!(bare.matches("/ecp/poll/x", Some("a=1")));
        assert!(!bare.matches("/ecp/polls", None));
    }

    #[test]
    fn malformed_entries_are_refused() {
        for bad in [
            "",
            "owa/x",
            "//evil/x",
            "/owa/a b",
            "/owa/%41",
            "/owa/x?",
            "/owa/x?flag",
            "/owa/x?=1",
            "/owa/x?a=",
            "/owa/x?a=1&",
        ] {
            assert!(BackgroundRequest::parse(bad).is_err(), "{bad}");
        }
        assert!(BackgroundRequest::parse(&format!("/{}", "a".repeat(600))).is_err());
    }

    #[test]
    fn an_entry_belongs_to_the_route_it_can_match() {
        let entry = BackgroundRequest::parse("/owa/custom.ashx").unwrap();
        assert!(entry.within("/owa"));
        assert!(entry.within("/"));
        assert!(!entry.within("/ecp"));
        assert!(BackgroundRequest::parse("/?UA=0").unwrap().within("/owa"));
    }
}
