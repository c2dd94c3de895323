//! Sessions: who signed in, with which MFA evidence, sealed into one cookie the browser carries.
//!
//! Why a sealed cookie and no session table: several gateways run side by side behind a load
//! balancer. When the whole session travels with the request, encrypted and authenticated
//! with keys every gateway holds, *any* gateway with the same keys serves *any* request — the
//! load balancer needs no affinity, a gateway can restart or drain without signing anyone out,
//! and no request waits on a shared store. What a stateless cookie cannot do by itself is be
//! revoked everywhere at once (sign-out, Entra's front-channel logout by `sid`); that is the
//! shared revocation list in Redis ([`SharedStore`]), keyed by [`SessionId`] and `sid`,
//! mirrored into each gateway's [`Revocations`] and consulted after [`SessionSeal::open`].
//!
//! - [`Session`]: only what decisions and logs need, kept small
//!   (GUIDs as 16 bytes, only the groups some route names) because it rides on every request
//!   and oversized cookies are the anchors' most common failure: under 1 KB with 20 groups.
//! - [`SessionSeal`]: the key ring. AES-256-GCM, the first key seals, every key opens, the
//!   cookie name bound in as associated data. Anything it cannot open — tampered, truncated,
//!   foreign, moved from another cookie, an older format — is `None`: signed out, never an
//!   error page.
//! - [`LoginTransaction`]: a sign-in in progress (state, nonce, PKCE verifier, return path),
//!   sealed by the same ring into its own short-lived cookie per `state`.
//! - [`Revocations`]: sessions ended before their cookie expires (sign-out, front-channel
//!   logout), kept so that made-up front-channel logouts can never push a genuine one out.
//! - [`UsedStates`]: login states already finished with, so a callback cannot be replayed.
//! - [`SharedStore`]: with `[redis]`, revocations and used login states shared by every
//!   gateway.
//! - [`exchange`]: Exchange's own identity cookies, expired when a gateway session starts or
//!   ends and forwarded only under the session they were set in.
//! - [`cookie`]: `Set-Cookie` values, finding a cookie among several `Cookie` fields, and
//!   taking the gateway's cookies out of what goes to Exchange.
//!
//! Times are unix seconds passed in as `now`, never read from the clock here, so expiry is
//! tested with fixed times and every gateway judges a cookie the same way.

pub mod cookie;
pub mod exchange;
mod expiring;
mod login;
mod model;
mod opened;
mod revocation;
mod seal;
mod shared_store;
mod used_states;

pub use cookie::{
    clear_cookie_header, cookie_values, cookies, find_cookie, is_valid_cookie_name,
    set_cookie_header, strip_cookies, SameSite,
};
pub use login::LoginTransaction;
pub use model::{EntraId, Guid, MfaEvidence, Session, SessionExpired, SessionId, TOUCH_INTERVAL};
pub use opened::OpenedSessions;
pub use revocation::{RevocationCounts, Revocations, MAX_SEEN_SIDS, MAX_UNSEEN_SID_REVOCATIONS};
pub use seal::{KeyError, SealError, SessionKey, SessionSeal, FORMAT_VERSION, MIN_KEY_BYTES};
pub use shared_store::{SharedRevocation, SharedStore, SharedStoreStatus, SharedStoreUnavailable};
pub use used_states::{StateReservation, UsedStates, MAX_USED_STATES};

#[cfg(test)]
mod tests;
