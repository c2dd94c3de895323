//! What the gateway tells its operators: the [`access`] log (one line per request), [`audit`]
//! events for the SIEM (sign-ins, sign-outs, policy denials) and the Prometheus [`metrics`].
//!
//! Nothing on a request's path depends on how these are written: a response body reports its
//! bytes and its end through [`crate::body::BodyObserver`], which the access record implements,
//! and the metrics are rendered from plain data the admin listener gathers at scrape time.

pub mod access;
pub mod audit;
pub mod metrics;
