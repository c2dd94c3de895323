//! Signing the user in to Exchange once the gateway has done the multifactor sign-in, so the
//! user does not sign in a second time. Exchange 2019 offers a few ways to be told who the user
//! is; [`adfs`] speaks the one built for AD FS: a signed WS-Federation token that OWA and ECP
//! accept when set to AD FS authentication. [`kerberos`] signs the user in to Exchange on
//! Windows authentication with a Kerberos ticket obtained by constrained delegation.

pub mod adfs;
pub mod kerberos;
