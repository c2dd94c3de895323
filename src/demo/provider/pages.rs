//! The provider's HTML: the sign-in page with its "was MFA done?" choice, the `form_post`
//! page that carries the code back to the client, and the signed-out page. Self-contained (no
//! scripts, fonts or images from elsewhere): the demo runs offline.

use super::TestUser;

pub(super) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

const STYLE: &str = "\
*{box-sizing:border-box}\
body{margin:0;min-height:100vh;background:#f2f2f2;color:#1b1b1b;\
font-family:\"Segoe UI\",\"Segoe UI Web (West European)\",-apple-system,system-ui,Roboto,\"Helvetica Neue\",sans-serif;\
display:flex;align-items:center;justify-content:center}\
main{width:100%;max-width:440px;background:#fff;padding:44px;box-shadow:0 2px 6px rgba(0,0,0,.2);margin:24px}\
.logo{display:flex;align-items:center;gap:8px;font-size:15px;font-weight:600;color:#737373}\
.squares{display:grid;grid-template-columns:10px 10px;gap:1px}\
.squares span{width:10px;height:10px;display:block}\
h1{font-size:24px;font-weight:600;margin:16px 0 8px}\
p{font-size:15px;line-height:1.45;margin:8px 0}\
.note{color:#605e5c;font-size:13px}\
fieldset{border:0;padding:0;margin:18px 0 0}\
legend{font-size:15px;font-weight:600;margin-bottom:6px}\
label{display:flex;gap:10px;align-items:flex-start;padding:9px 8px;border:1px solid transparent;cursor:pointer}\
label:hover{background:#f2f2f2}\
label small{display:block;color:#605e5c;font-size:13px}\
input[type=radio]{margin-top:4px}\
.context{background:#f0f6ff;border-left:3px solid #0067b8;padding:8px 10px;font-size:13px;margin-top:16px}\
.buttons{display:flex;flex-direction:row-reverse;gap:8px;margin-top:28px}\
button{min-width:108px;padding:6px 12px;font:inherit;font-size:15px;border:0;cursor:pointer}\
.primary{background:#0067b8;color:#fff}.primary:hover{background:#005da6}\
.secondary{background:#cccccc;color:#1b1b1b}.secondary:hover{background:#b3b3b3}\
footer{margin-top:28px;color:#737373;font-size:12px;word-break:break-all}";

const LOGO: &str = "<div class=\"logo\"><div class=\"squares\">\
<span style=\"background:#f25022\"></span><span style=\"background:#7fba00\"></span>\
<span style=\"background:#00a4ef\"></span><span style=\"background:#ffb900\"></span></div>\
Test identity provider</div>";

/// What the sign-in page shows and sends back.
pub(super) struct SignIn<'a> {
    pub(super) action: &'a str,
    pub(super) tenant_id: &'a str,
    pub(super) client_id: &'a str,
    /// Every parameter of the authorization request, posted back as hidden fields.
    pub(super) params: &'a [(String, String)],
    pub(super) users: &'a [TestUser],
    /// Authentication-context ids the client asked for in the `claims` parameter.
    pub(super) acrs: &'a [String],
}

pub(super) fn sign_in(page: &SignIn<'_>) -> String {
    let hidden: String = page
        .params
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "user" | "mfa" | "decision"))
        .map(|(name, value)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                escape(name),
                escape(value)
            )
        })
        .collect();
    let users: String = page
        .users
        .iter()
        .enumerate()
        .map(|(i, user)| {
            let groups = if user.groups.is_empty() {
                "no groups".to_owned()
            } else {
                format!("{} groups", user.groups.len())
            };
            format!(
                "<label><input type=\"radio\" name=\"user\" value=\"{}\"{}>\
<span>{}<small>{} · {}</small></span></label>",
                escape(&user.username),
                if i == 0 { " checked" } else { "" },
                escape(&user.name),
                escape(&user.upn),
                groups,
            )
        })
        .collect();
    let context = if page.acrs.is_empty() {
        String::new()
    } else {
        format!(
            "<p class=\"context\">The application asks for authentication context <b>{}</b>. \
It is granted only to a sign-in with multifactor authentication.</p>",
            escape(&page.acrs.join(", "))
        )
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Sign in to your account</title><style>{STYLE}</style></head><body><main>{LOGO}\
<h1>Sign in</h1>\
<p class=\"note\">A test OpenID provider for the mfa-gateway demo and tests: it is not Microsoft \
Entra ID and asks for no password. Choose who signs in and whether multifactor authentication \
was done.</p>\
<form method=\"post\" action=\"{action}\">{hidden}\
<fieldset><legend>Account</legend>{users}</fieldset>\
<fieldset><legend>How did this sign-in happen?</legend>\
<label><input type=\"radio\" name=\"mfa\" value=\"no\" required>\
<span>Password only<small>The ID token will say amr [\"pwd\"]</small></span></label>\
<label><input type=\"radio\" name=\"mfa\" value=\"yes\" required>\
<span>Password and multifactor authentication (MFA completed)\
<small>The ID token will say amr [\"pwd\", \"mfa\"]</small></span></label></fieldset>\
{context}\
<div class=\"buttons\">\
<button type=\"submit\" class=\"primary\" name=\"decision\" value=\"approve\">Sign in</button>\
<button type=\"submit\" class=\"secondary\" name=\"decision\" value=\"cancel\" formnovalidate>Cancel</button>\
</div></form>\
<footer>Tenant {tenant} · Application {client}</footer></main></body></html>\n",
        action = escape(page.action),
        tenant = escape(page.tenant_id),
        client = escape(page.client_id),
    )
}

/// The page Entra answers a `response_mode=form_post` sign-in with: a form that posts the
/// result to the client's redirect URI by itself (a button when scripts are off).
pub(super) fn form_post<K: AsRef<str>, V: AsRef<str>>(
    redirect_uri: &str,
    fields: &[(K, V)],
) -> String {
    let inputs: String = fields
        .iter()
        .map(|(name, value)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                escape(name.as_ref()),
                escape(value.as_ref())
            )
        })
        .collect();
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Working...</title>\
</head><body><form method=\"post\" name=\"hiddenform\" action=\"{}\">{inputs}\
<noscript><p>Script is disabled. Click Submit to continue.</p>\
<input type=\"submit\" value=\"Submit\"></noscript></form>\
<script>document.forms[0].submit();</script></body></html>\n",
        escape(redirect_uri)
    )
}

pub(super) fn signed_out() -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Signed out</title><style>{STYLE}</style></head><body><main>{LOGO}\
<h1>You have signed out</h1><p>You have signed out of your account. \
It's a good idea to close all browser windows.</p></main></body></html>\n"
    )
}
