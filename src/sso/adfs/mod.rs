//! The gateway as the "AD FS" that Exchange trusts (`sso = "adfs"`): a WS-Federation passive
//! sign-in response carrying a signed SAML 1.1 assertion with the user's UPN and on-premises
//! SID, which Outlook on the web and the Exchange Control Panel accept in AD FS mode.
//!
//! - [`SigningCredential`]: the token-signing certificate and its RSA key, checked to belong
//!   together; its [`Thumbprint`] is what Exchange's `AdfsSignCertificateThumbprint` lists.
//! - [`issue`]: one token for one user and one relying party (realm), as the `wresult` field of
//!   the form the browser posts to Exchange.

mod signing;
#[cfg(test)]
mod test_credential;
mod token;

pub use signing::{thumbprint_of, CredentialError, SigningCredential, Thumbprint};
pub use token::{issue, IssuedToken, SignError, TokenRequest};
