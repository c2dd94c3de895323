//! Why the gateway could not get a Kerberos ticket for a user: one reason per thing an
//! administrator does about it, named as the audit log and the metrics label name it.

use std::fmt;

/// The audit reason of a Kerberos failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KerberosReason {
    /// `user_not_found`: no account in Active Directory has this UPN (or sAMAccountName).
    UserNotFound,
    /// `account_disabled`: the user's account is disabled, locked out or expired.
    AccountDisabled,
    /// `delegation_not_allowed`: the service account may not delegate to this SPN (it is not in
    /// its `msDS-AllowedToDelegateTo`), or the KDC refused the delegation for another policy
    /// reason.
    DelegationNotAllowed,
    /// `account_sensitive`: the KDC issued the user's S4U2Self ticket without the forwardable
    /// flag: the user is marked "Account is sensitive and cannot be delegated" or is in
    /// Protected Users — or the service account is not trusted to delegate with "any
    /// authentication protocol", in which case every user gets this reason.
    AccountSensitive,
    /// `spn_not_found`: no account has the SPN the gateway asked a ticket for (`setspn -Q`).
    SpnNotFound,
    /// `kdc_unreachable`: no domain controller answered.
    KdcUnreachable,
    /// `clock_skew`: the gateway's clock and the domain controller's differ by more than five
    /// minutes.
    ClockSkew,
    /// `gateway_credentials`: the gateway's own account could not sign in with its keytab
    /// (wrong or outdated key, account disabled, principal not in the keytab).
    GatewayCredentials,
    /// `mutual_auth_failed`: Exchange's answer did not prove it holds the SPN's key.
    MutualAuthFailed,
    /// `ticket_refused`: Exchange answered `401 WWW-Authenticate: Negotiate` to a token, and
    /// again to a token made from a fresh ticket: Extended Protection with TLS ended before
    /// Exchange, or an SPN Exchange cannot decrypt.
    TicketRefused,
    /// `kerberos_error`: any other refusal by the KDC; the detail says which.
    Kerberos,
    /// `internal`: the gateway could not run the request at all.
    Internal,
}

impl KerberosReason {
    /// Every reason, for metrics that list each one.
    pub const ALL: [KerberosReason; 12] = [
        KerberosReason::UserNotFound,
        KerberosReason::AccountDisabled,
        KerberosReason::DelegationNotAllowed,
        KerberosReason::AccountSensitive,
        KerberosReason::SpnNotFound,
        KerberosReason::KdcUnreachable,
        KerberosReason::ClockSkew,
        KerberosReason::GatewayCredentials,
        KerberosReason::MutualAuthFailed,
        KerberosReason::TicketRefused,
        KerberosReason::Kerberos,
        KerberosReason::Internal,
    ];

    /// The audit reason and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            KerberosReason::UserNotFound => "user_not_found",
            KerberosReason::AccountDisabled => "account_disabled",
            KerberosReason::DelegationNotAllowed => "delegation_not_allowed",
            KerberosReason::AccountSensitive => "account_sensitive",
            KerberosReason::SpnNotFound => "spn_not_found",
            KerberosReason::KdcUnreachable => "kdc_unreachable",
            KerberosReason::ClockSkew => "clock_skew",
            KerberosReason::GatewayCredentials => "gateway_credentials",
            KerberosReason::MutualAuthFailed => "mutual_auth_failed",
            KerberosReason::TicketRefused => "ticket_refused",
            KerberosReason::Kerberos => "kerberos_error",
            KerberosReason::Internal => "internal",
        }
    }

    pub(super) fn index(self) -> usize {
        KerberosReason::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or(KerberosReason::ALL.len() - 1)
    }
}

impl fmt::Display for KerberosReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure with its reason and what GSSAPI said (for the log; never shown to the user, and
/// never containing a ticket or key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KerberosError {
    pub reason: KerberosReason,
    pub detail: String,
}

impl KerberosError {
    pub fn new(reason: KerberosReason, detail: String) -> KerberosError {
        KerberosError { reason, detail }
    }
}

impl fmt::Display for KerberosError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

impl std::error::Error for KerberosError {}
