//! Signing in through the test OpenID provider (shaped like Entra ID v1.0): the provider with
//! the gateway's client registered, a gateway clock the test moves, and a browser that walks
//! the redirect to the provider, its sign-in form and the callback back to the gateway, keeping
//! cookies as a browser does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};
use mfa_gateway::clock::Clock;
use mfa_gateway::demo::{
    parse_form_post, sign_in_form, ClientCredential, ProviderOptions, TestProvider,
};

use super::clients::{read_reply, Reply, SetCookie};
use super::config::{CLIENT_ID, CLIENT_SECRET, MAIL_HOST, SESSION_COOKIE};

/// The gateway's clock: the system time plus an offset the test moves forward.
#[derive(Clone, Default)]
pub struct TestClock {
    offset: Arc<AtomicU64>,
}

impl TestClock {
    pub fn new() -> TestClock {
        TestClock::default()
    }

    pub fn clock(&self) -> Clock {
        let offset = self.offset.clone();
        Clock::from_fn(move || system_now() + offset.load(Ordering::SeqCst))
    }

    pub fn advance(&self, by: Duration) {
        self.offset.fetch_add(by.as_secs(), Ordering::SeqCst);
    }

    /// What the gateway believes the time is.
    pub fn now(&self) -> u64 {
        system_now() + self.offset.load(Ordering::SeqCst)
    }
}

pub fn system_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A test provider with the gateway's client registered with [`CLIENT_SECRET`].
pub async fn start_provider() -> TestProvider {
    let provider = TestProvider::start(ProviderOptions::default())
        .await
        .expect("test provider starts");
    provider.register_client(CLIENT_ID, ClientCredential::Secret(CLIENT_SECRET.into()));
    provider
}

/// What the provider sends the browser back to the gateway with.
#[derive(Clone, Debug)]
pub enum Callback {
    /// `response_mode=form_post`: an auto-submitting form, posted cross-site.
    FormPost {
        url: String,
        fields: Vec<(String, String)>,
    },
    /// `response_mode=query`: a redirect to the callback URL.
    Query { url: String },
}

impl Callback {
    pub fn param(&self, name: &str) -> Option<String> {
        match self {
            Callback::FormPost { fields, .. } => fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone()),
            Callback::Query { url } => url::Url::parse(url)
                .ok()?
                .query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned()),
        }
    }
}

#[derive(Clone, Debug)]
struct JarCookie {
    value: String,
    same_site_none: bool,
}

/// A browser talking to one gateway on [`MAIL_HOST`] and to the test provider. It keeps
/// the gateway's cookies itself (the gateway marks them `Secure` even over plain HTTP) and
/// sends them as a browser would: all of them on navigations and same-site requests, only
/// `SameSite=None` ones on the provider's cross-site form POST.
pub struct Browser {
    client: reqwest::Client,
    origin: String,
    jar: BTreeMap<String, JarCookie>,
    /// The provider's cookies (its browser session, with single sign-on).
    provider_jar: std::sync::Mutex<BTreeMap<String, String>>,
    /// Every `Set-Cookie` received, in order.
    pub cookie_log: Vec<SetCookie>,
}

impl Browser {
    pub fn new(gateway: SocketAddr) -> Browser {
        Browser {
            client: browser_client(gateway),
            origin: format!("http://{MAIL_HOST}:{}", gateway.port()),
            jar: BTreeMap::new(),
            provider_jar: Default::default(),
            cookie_log: Vec::new(),
        }
    }

    /// From now on talks to another gateway behind the same name (the load balancer
    /// picked another one), keeping its cookies: cookies are not port-specific.
    pub fn switch_gateway(&mut self, gateway: SocketAddr) {
        self.client = browser_client(gateway);
        self.origin = format!("http://{MAIL_HOST}:{}", gateway.port());
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.jar.get(name).map(|c| c.value.as_str())
    }

    /// Plants a cookie. It goes with every request, cross-site POSTs included: an
    /// attacker's client sends whatever it likes.
    pub fn set_cookie(&mut self, name: &str, value: &str) {
        self.jar.insert(
            name.to_owned(),
            JarCookie {
                value: value.to_owned(),
                same_site_none: true,
            },
        );
    }

    pub fn remove_cookie(&mut self, name: &str) {
        self.jar.remove(name);
    }

    pub fn cookie_names(&self) -> Vec<String> {
        self.jar.keys().cloned().collect()
    }

    /// Names of the pending-login cookies the browser holds now.
    pub fn login_cookies(&self) -> Vec<String> {
        let prefix = format!("{SESSION_COOKIE}-login-");
        self.jar
            .keys()
            .filter(|name| name.starts_with(&prefix))
            .cloned()
            .collect()
    }

    /// The `Cookie` header this browser sends to the gateway.
    pub fn cookie_header(&self, cross_site_post: bool) -> Option<String> {
        let pairs: Vec<String> = self
            .jar
            .iter()
            .filter(|(_, c)| !cross_site_post || c.same_site_none)
            .map(|(name, c)| format!("{name}={}", c.value))
            .collect();
        (!pairs.is_empty()).then(|| pairs.join("; "))
    }

    fn absorb(&mut self, reply: &Reply) {
        for cookie in reply.set_cookies() {
            if cookie.is_removal() {
                self.jar.remove(&cookie.name);
            } else {
                let same_site_none = cookie
                    .attribute("samesite")
                    .is_some_and(|v| v.eq_ignore_ascii_case("none"));
                self.jar.insert(
                    cookie.name.clone(),
                    JarCookie {
                        value: cookie.value.clone(),
                        same_site_none,
                    },
                );
            }
            self.cookie_log.push(cookie);
        }
    }

    fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_owned()
        } else {
            format!("{}{path_or_url}", self.origin)
        }
    }

    /// Sends one request to the gateway with this browser's cookies (and `headers`), and
    /// keeps the cookies the answer sets.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(String, &str)>,
        cross_site_post: bool,
    ) -> Reply {
        let mut builder = self.client.request(method, self.url(path));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if let Some(cookie) = self.cookie_header(cross_site_post) {
            builder = builder.header("cookie", cookie);
        }
        if let Some((body, content_type)) = body {
            builder = builder.header("content-type", content_type).body(body);
        }
        let reply = read_reply(builder.send().await.expect("gateway answers")).await;
        self.absorb(&reply);
        reply
    }

    /// A top-level page load (typing the address, following a link).
    pub async fn navigate(&mut self, path: &str) -> Reply {
        self.request(Method::GET, path, NAVIGATION, None, false)
            .await
    }

    /// A script's `XMLHttpRequest` GET, as OWA sends them.
    pub async fn xhr(&mut self, path: &str) -> Reply {
        self.request(Method::GET, path, XHR, None, false).await
    }

    /// A `fetch()` from the page (Fetch Metadata only, no X-Requested-With).
    pub async fn fetch(&mut self, method: Method, path: &str) -> Reply {
        self.request(method, path, FETCH, None, false).await
    }

    /// Navigates to `path` and expects the gateway's redirect to the provider; returns the
    /// authorization URL.
    pub async fn start_sign_in(&mut self, path: &str, provider: &TestProvider) -> String {
        let reply = self.navigate(path).await;
        assert_eq!(
            reply.status,
            StatusCode::FOUND,
            "a page load without a session must be redirected to sign in; got {}",
            reply.describe()
        );
        let location = reply
            .location()
            .expect("redirect has a Location")
            .to_owned();
        assert!(
            location.starts_with(&provider.authorization_endpoint()),
            "redirect goes to the provider's authorization endpoint: {location}"
        );
        location
    }

    /// Signs in at the provider's page as `user`, saying whether MFA was done; returns
    /// what the provider sends the browser back to the gateway with.
    pub async fn sign_in_at_provider(
        &self,
        authorize_url: &str,
        user: &str,
        mfa: bool,
    ) -> Callback {
        let (url, form) = sign_in_form(authorize_url, user, mfa);
        self.submit_provider_form(&url, &form).await
    }

    /// Presses Cancel on the provider's sign-in page.
    pub async fn cancel_at_provider(&self, authorize_url: &str) -> Callback {
        let (url, mut form) = sign_in_form(authorize_url, "alice", false);
        for (name, value) in &mut form {
            if name == "decision" {
                *value = "cancel".into();
            }
        }
        self.submit_provider_form(&url, &form).await
    }

    /// The provider's `Cookie` header, and its `Set-Cookie`s kept.
    fn provider_cookie_header(&self) -> Option<String> {
        let jar = self.provider_jar.lock().unwrap();
        let pairs: Vec<String> = jar.iter().map(|(n, v)| format!("{n}={v}")).collect();
        (!pairs.is_empty()).then(|| pairs.join("; "))
    }

    fn absorb_provider(&self, reply: &Reply) {
        let mut jar = self.provider_jar.lock().unwrap();
        for cookie in reply.set_cookies() {
            if cookie.is_removal() {
                jar.remove(&cookie.name);
            } else {
                jar.insert(cookie.name.clone(), cookie.value.clone());
            }
        }
    }

    /// Follows a redirect to the provider's authorization endpoint with the provider's cookies,
    /// as a browser does; returns the provider's answer (its sign-in page, or — signed in there
    /// already — the answer for the client).
    pub async fn visit_provider(&self, authorize_url: &str) -> Reply {
        let mut request = self.client.get(authorize_url).header("accept", "text/html");
        if let Some(cookie) = self.provider_cookie_header() {
            request = request.header("cookie", cookie);
        }
        let reply = read_reply(request.send().await.expect("provider answers")).await;
        self.absorb_provider(&reply);
        reply
    }

    async fn submit_provider_form(&self, url: &str, form: &[(String, String)]) -> Callback {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut request = self
            .client
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "text/html");
        if let Some(cookie) = self.provider_cookie_header() {
            request = request.header("cookie", cookie);
        }
        let reply = read_reply(request.body(body).send().await.expect("provider answers")).await;
        self.absorb_provider(&reply);
        match reply.status {
            StatusCode::OK => {
                let (url, fields) = parse_form_post(&reply.body)
                    .unwrap_or_else(|| panic!("not a form_post page: {}", reply.body));
                Callback::FormPost { url, fields }
            }
            StatusCode::FOUND => Callback::Query {
                url: reply.location().expect("Location").to_owned(),
            },
            _ => panic!("the provider refused the sign-in: {}", reply.describe()),
        }
    }

    /// Delivers the provider's answer to the gateway's callback as a browser does.
    pub async fn deliver(&mut self, callback: &Callback) -> Reply {
        match callback {
            Callback::FormPost { url, fields } => {
                let body = url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(fields)
                    .finish();
                self.request(
                    Method::POST,
                    url,
                    &[
                        ("accept", "text/html"),
                        ("sec-fetch-mode", "navigate"),
                        ("sec-fetch-site", "cross-site"),
                    ],
                    Some((body, "application/x-www-form-urlencoded")),
                    true,
                )
                .await
            }
            Callback::Query { url } => {
                let url = url.clone();
                self.request(
                    Method::GET,
                    &url,
                    &[
                        ("accept", "text/html"),
                        ("sec-fetch-mode", "navigate"),
                        ("sec-fetch-site", "cross-site"),
                    ],
                    None,
                    false,
                )
                .await
            }
        }
    }

    /// The whole sign-in from a page load of `path`: redirect, provider form, callback.
    /// Returns the gateway's answer to the callback.
    pub async fn sign_in(
        &mut self,
        path: &str,
        provider: &TestProvider,
        user: &str,
        mfa: bool,
    ) -> Reply {
        let authorize = self.start_sign_in(path, provider).await;
        let callback = self.sign_in_at_provider(&authorize, user, mfa).await;
        self.deliver(&callback).await
    }

    /// [`Browser::sign_in`] that must succeed: the callback redirects to `path` and sets
    /// the session cookie.
    pub async fn sign_in_ok(&mut self, path: &str, provider: &TestProvider, user: &str) {
        let reply = self.sign_in(path, provider, user, true).await;
        assert_eq!(
            reply.status,
            StatusCode::FOUND,
            "sign-in with MFA must succeed: {}",
            reply.describe()
        );
        assert_eq!(reply.location(), Some(path), "{}", reply.describe());
        assert!(
            reply.new_session_cookie().is_some(),
            "sign-in sets the session cookie: {}",
            reply.describe()
        );
    }
}

pub const NAVIGATION: &[(&str, &str)] = &[
    (
        "accept",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    ),
    ("sec-fetch-mode", "navigate"),
    ("sec-fetch-dest", "document"),
];
pub const XHR: &[(&str, &str)] = &[
    ("accept", "*/*"),
    ("x-requested-with", "XMLHttpRequest"),
    ("sec-fetch-mode", "cors"),
    ("sec-fetch-dest", "empty"),
];
pub const FETCH: &[(&str, &str)] = &[
    ("accept", "application/json"),
    ("sec-fetch-mode", "cors"),
    ("sec-fetch-dest", "empty"),
];

fn browser_client(gateway: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .resolve(MAIL_HOST, gateway)
        .http1_only()
        .build()
        .unwrap()
}
