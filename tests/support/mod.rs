//! Test equipment shared by the integration tests, one file per kind:
//!
//! - `pki`: a private certificate authority issuing server certificates.
//! - `fake_exchange`: builder-style fake Exchange servers that record every request.
//! - `adfs_exchange`: Exchange's OWA and ECP in AD FS mode, validating WS-Federation tokens as
//!   Exchange and WIF do (with `xmlsec1`), recording every verdict.
//! - `xmlsec1`: the reference XML-signature verifier, run as a subprocess.
//! - `samba`: a Samba Active Directory domain controller (its KDC) on a loopback address of its
//!   own, provisioned with the accounts of a Kerberos constrained delegation deployment.
//! - `kerberos_exchange`: Exchange on Windows authentication with Extended Protection, a
//!   python-gssapi acceptor that verifies tokens and channel bindings.
//! - `hma_exchange`: Exchange's OWA and ECP with hybrid modern authentication, a second OpenID
//!   client of the test provider that validates the ID token Entra posts to `/owa/`.
//! - `gateway`: the gateway started in this process on pre-bound 127.0.0.1:0 listeners.
//! - `process`: the real `mfa-gateway` binary, on ports reserved for it.
//! - `redis_server`: a real `redis-server` on a loopback port, killed and restarted at will.
//! - `ports`: loopback ports held for listeners that something else binds.
//! - `config`: the sign-in tests' gateway configuration and the names it publishes.
//! - `sign_in`: the test OpenID provider, a clock the test moves, a browser that signs in.
//! - `clients`: HTTP clients trusting the test CA, and answers read to the end.
//! - `wait`: polling with a deadline, instead of sleeping.
//! - `logging`: log output and the capture of the gateway's audit events.
//!
//! Everything is re-exported here, so a test names `support::TestGateway`, not the file.
// Each test binary uses part of the equipment.
#![allow(dead_code, unused_imports)]

pub mod adfs_exchange;
pub mod clients;
pub mod config;
pub mod fake_exchange;
pub mod gateway;
pub mod hma_exchange;
pub mod kerberos_exchange;
pub mod logging;
pub mod pki;
pub mod ports;
pub mod process;
pub mod redis_server;
pub mod samba;
pub mod sign_in;
pub mod wait;
pub mod xmlsec1;

pub use adfs_exchange::*;
pub use clients::*;
pub use config::*;
pub use fake_exchange::*;
pub use gateway::*;
pub use hma_exchange::*;
pub use kerberos_exchange::*;
pub use logging::*;
pub use pki::*;
pub use ports::*;
pub use process::*;
pub use redis_server::*;
pub use samba::*;
pub use sign_in::*;
pub use wait::*;
pub use xmlsec1::*;
