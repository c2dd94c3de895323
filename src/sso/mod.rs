//! Signing the user in to Exchange after the gateway has admitted them, per route's `sso` key.
//!
//! - [`adfs`]: Exchange's AD FS claims authentication — the gateway is the WS-Federation issuer
//!   Exchange trusts, and issues the SAML token itself.

pub mod adfs;
