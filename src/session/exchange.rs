//! Exchange's own identity cookies, which live in the same browser as the gateway session and
//! would otherwise outlive it: on a shared computer the next person to sign in at the gateway
//! would find the previous user's Exchange session still open.
//!
//! The names, and the paths Exchange 2019 sets them on (docs/security.md lists the sources):
//! - `cadata`, `cadataKey`, `cadataIV`, `cadataSig`, `cadataTTL`: forms-based authentication
//!   (Exchange's `CookieNames.Fba`); `cadata` is the encrypted user name and password. Path `/`.
//!   `sessionid` is the older forms-auth companion (Exchange 2003–2010). Path `/`.
//! - `FedAuth`, `FedAuth1`, …: the claims session of AD FS authentication (WIF's session
//!   module, chunked when the token is large). Path: the virtual directory (`/owa/`, `/ecp/`).
//! - `UC` (or `UC_<guid>` for another mailbox): OWA's user context, the id of the signed-in
//!   user's server-side context and the mailbox key. Path `/`.
//! - `X-OWA-CANARY`: OWA's anti-forgery token, derived from the user's logon; OWA's script
//!   reads it. `msExchEcpCanary` and `ASP.NET_SessionId`: the same for ECP.
//! - `X-BackEndCookie`, `X-BackEndCookie2`: the front end's routing to the mailbox server,
//!   naming the user's SID. Path: the virtual directory (`/owa`, `/ecp`).
//!
//! Not identity, and left alone: `ClientId` (a browser id), `PrivateComputer`, `PBack`,
//! `X-OWA-JS-PSD`, language and layout preferences.

use http::header::HeaderValue;
use http::HeaderMap;

use super::cookie::cookies;

/// Exchange's identity cookies that Exchange sets with fixed names, and the paths each is set
/// on. Expiring a cookie takes its exact name and path, so each path Exchange may use is listed.
const IDENTITY_COOKIES: &[(&str, &[&str])] = &[
    ("cadata", &["/"]),
    ("cadataKey", &["/"]),
    ("cadataIV", &["/"]),
    ("cadataSig", &["/"]),
    ("cadataTTL", &["/"]),
    ("sessionid", &["/"]),
    ("UC", &["/", "/owa"]),
    ("X-OWA-CANARY", &["/", "/owa"]),
    ("msExchEcpCanary", &["/", "/ecp"]),
    ("ASP.NET_SessionId", &["/", "/ecp"]),
    ("X-BackEndCookie", &["/", "/owa", "/ecp"]),
    ("X-BackEndCookie2", &["/", "/owa", "/ecp"]),
    ("FedAuth", FEDAUTH_PATHS),
    ("FedAuth1", FEDAUTH_PATHS),
    ("FedAuth2", FEDAUTH_PATHS),
    ("FedAuth3", FEDAUTH_PATHS),
    ("FedAuth4", FEDAUTH_PATHS),
];

/// WIF's session cookie is scoped to the application's virtual directory, with a trailing `/`.
const FEDAUTH_PATHS: &[&str] = &["/owa/", "/ecp/", "/"];

/// Every path any identity cookie may be on: used for names only seen in a request (a
/// `UC_<guid>`, a fifth `FedAuth` chunk), whose path the browser does not say.
const ALL_PATHS: &[&str] = &["/", "/owa", "/owa/", "/ecp", "/ecp/"];

/// Whether `name` is one of Exchange's identity cookies. Exchange reads cookie names without
/// regard to case, so neither does this.
pub fn is_exchange_identity_cookie(name: &str) -> bool {
    if IDENTITY_COOKIES
        .iter()
        .any(|(known, _)| known.eq_ignore_ascii_case(name))
    {
        return true;
    }
    // `UC_<guid>`: the user context of another mailbox opened in the same browser.
    if name.len() > 3 && name.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("UC_")) {
        return true;
    }
    // `FedAuth<n>`: further chunks of a large claims token.
    name.len() > 7
        && name
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("FedAuth"))
        && name.bytes().skip(7).all(|b| b.is_ascii_digit())
}

/// `Set-Cookie` values that make the browser drop every Exchange identity cookie: each known
/// name on each path Exchange sets it on, and any other identity cookie `request` carries, on
/// every path. Only `Max-Age=0` and `Path`: the fewest bytes that delete a cookie (a
/// response carries about forty of these), and valid on plain HTTP as on HTTPS.
pub fn expire_exchange_identity_cookies(request: &HeaderMap) -> Vec<HeaderValue> {
    let mut out = Vec::with_capacity(48);
    for (name, paths) in IDENTITY_COOKIES {
        for path in *paths {
            out.extend(expiry(name, path));
        }
    }
    let mut extra: Vec<&str> = cookies(request)
        .map(|(name, _)| name)
        .filter(|name| {
            is_exchange_identity_cookie(name)
                && !IDENTITY_COOKIES.iter().any(|(known, _)| known == name)
        })
        .collect();
    extra.sort_unstable();
    extra.dedup();
    for name in extra.into_iter().take(16) {
        for path in ALL_PATHS {
            out.extend(expiry(name, path));
        }
    }
    out
}

fn expiry(name: &str, path: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("{name}=; Max-Age=0; Path={path}")).ok()
}

/// Whether the request carries any Exchange identity cookie.
pub fn carries_exchange_identity_cookie(request: &HeaderMap) -> bool {
    cookies(request).any(|(name, _)| is_exchange_identity_cookie(name))
}

/// Whether a `Set-Cookie` value from Exchange sets (not deletes) an identity cookie.
pub fn sets_exchange_identity_cookie(set_cookie: &HeaderValue) -> bool {
    let Ok(text) = set_cookie.to_str() else {
        return false;
    };
    let mut parts = text.split(';');
    let Some((name, value)) = parts.next().and_then(|pair| pair.split_once('=')) else {
        return false;
    };
    if !is_exchange_identity_cookie(name.trim()) {
        return false;
    }
    // Exchange deletes a cookie with an empty value and an `expires` in the past; a
    // `Max-Age` of zero or less deletes too. Anything else sets it (a past `expires` with a
    // value would only make the gateway bind a cookie the browser drops: harmless).
    let deletes = value.trim().is_empty()
        || parts.any(|attribute| {
            attribute
                .trim()
                .split_once('=')
                .filter(|(name, _)| name.trim().eq_ignore_ascii_case("max-age"))
                .and_then(|(_, age)| age.trim().parse::<i64>().ok())
                .is_some_and(|age| age <= 0)
        });
    !deletes
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::COOKIE;

    #[test]
    fn exchange_identity_cookies_are_recognised_in_any_case() {
        for name in [
            "cadata",
            "CADATA",
            "cadataKey",
            "cadataIV",
            "cadataSig",
            "cadataTTL",
            "FedAuth",
            "FedAuth1",
            "FedAuth12",
            "UC",
            "UC_6b0f4c0e3d2a4f9b8a7e6d5c4b3a2f1e",
            "X-OWA-CANARY",
            "msExchEcpCanary",
            "X-BackEndCookie",
            "X-BackEndCookie2",
            "ASP.NET_SessionId",
            "sessionid",
        ] {
            assert!(is_exchange_identity_cookie(name), "{name}");
        }
        for name in [
            "ClientId",
            "PrivateComputer",
            "PBack",
            "X-OWA-JS-PSD",
            "FedAuthX",
            "cadataX",
            "UC2",
            "__Host-mfagw",
            "",
        ] {
            assert!(!is_exchange_identity_cookie(name), "{name}");
        }
    }

    #[test]
    fn expiry_covers_every_name_on_its_paths_and_names_only_seen_in_the_request() {
        let mut request = HeaderMap::new();
        request.insert(
            COOKIE,
            HeaderValue::from_static("UC_0123=x; FedAuth7=y; ClientId=z; cadata=q"),
        );
        let values: Vec<String> = expire_exchange_identity_cookies(&request)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        for expected in [
            "cadata=; Max-Age=0; Path=/",
            "FedAuth=; Max-Age=0; Path=/owa/",
            "FedAuth1=; Max-Age=0; Path=/ecp/",
            "X-BackEndCookie=; Max-Age=0; Path=/owa",
            "msExchEcpCanary=; Max-Age=0; Path=/ecp",
            "UC_0123=; Max-Age=0; Path=/owa",
            "FedAuth7=; Max-Age=0; Path=/ecp/",
        ] {
            assert!(
                values.iter().any(|v| v == expected),
                "{expected} in {values:?}"
            );
        }
        assert!(!values.iter().any(|v| v.starts_with("ClientId")));
        assert!(values.len() < 60, "{}", values.len());
    }

    #[test]
    fn deletions_from_exchange_are_not_counted_as_setting_a_cookie() {
        for set in [
            "cadata=abc; path=/; HttpOnly",
            "FedAuth=77u/PD94; path=/owa/; secure; HttpOnly",
            "X-OWA-CANARY=k5lZ; path=/; secure",
        ] {
            assert!(
                sets_exchange_identity_cookie(&HeaderValue::from_static(set)),
                "{set}"
            );
        }
        for set in [
            "cadata=; expires=Thu, 01-Jan-1970 00:00:00 GMT; path=/",
            "X-BackEndCookie=; expires=Thu, 15-Aug-1991 03:08:59 GMT; path=/owa; secure",
            "UC=gone; Max-Age=0; path=/",
            "ClientId=ABC; path=/",
        ] {
            assert!(
                !sets_exchange_identity_cookie(&HeaderValue::from_static(set)),
                "{set}"
            );
        }
    }
}
