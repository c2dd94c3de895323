//! What the benchmarks share: a signed-in user's session as Entra's tokens make it.

use std::time::Duration;

use mfa_gateway::session::{EntraId, Guid, MfaEvidence, Session, SessionId};

/// The benchmarks' "now", in seconds since the epoch.
pub const NOW: u64 = 1_800_000_000;

/// A session as a realistic sign-in leaves it: upn, name, on-premises SID, `amr` pwd+mfa,
/// signed in two minutes ago, in tenant `tid`, member of `groups` groups.
pub fn realistic_session(tid: &str, groups: u8) -> Session {
    let mut session = Session::new(
        SessionId([0x3c; 16]),
        EntraId::parse("4f1c2a7e-9b3d-4e8f-a1c2-3d4e5f6a7b8c"),
        EntraId::parse(tid),
        NOW - 120,
        NOW - 60,
        Duration::from_secs(10 * 3600),
    );
    session.sid = Some("001d5c2b-8a34-4f7e-9e0a-5b6c7d8e9f01".into());
    session.upn = Some("adele.vance@contoso.com".into());
    session.name = Some("Adele Vance".into());
    session.onprem_sid = Some("S-1-5-21-3623811015-3361044348-30300820-1013".into());
    session.groups = (0..groups)
        .map(|i| {
            Guid([
                i, 0x5c, 0x7e, 0x11, 0x2b, 0x9d, 0x40, 0x1a, 0x83, 0x6f, 0xe2, 0x0c, 0x4b, 0x77,
                0xd1, 0x3a,
            ])
        })
        .collect();
    session.mfa = MfaEvidence {
        amr: vec!["pwd".into(), "mfa".into()],
        acrs: Vec::new(),
    };
    session
}
