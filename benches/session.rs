//! Opening and checking the session cookie happens on every request to an `mfa` route, before
//! anything reaches Exchange. Goal: under 5 µs for a realistic cookie.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use mfa_gateway::session::{
    EntraId, Guid, MfaEvidence, Session, SessionId, SessionKey, SessionSeal,
};

const NOW: u64 = 1_800_000_000;

fn realistic_session() -> Session {
    let mut session = Session::new(
        SessionId([0x3c; 16]),
        EntraId::parse("4f1c2a7e-9b3d-4e8f-a1c2-3d4e5f6a7b8c"),
        EntraId::parse("72f988bf-86f1-41af-91ab-2d7cd011db47"),
        NOW - 120,
        NOW - 60,
        Duration::from_secs(10 * 3600),
    );
    session.sid = Some("001d5c2b-8a34-4f7e-9e0a-5b6c7d8e9f01".into());
    session.upn = Some("adele.vance@contoso.com".into());
    session.name = Some("Adele Vance".into());
    session.onprem_sid = Some("S-1-5-21-3623811015-3361044348-30300820-1013".into());
    session.groups = (0u8..5)
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

fn open_and_check(c: &mut Criterion) {
    let keys = match (
        SessionKey::from_bytes(&[7; 32]),
        SessionKey::from_bytes(&[8; 32]),
    ) {
        (Ok(new), Ok(old)) => vec![new, old],
        _ => panic!("benchmark keys are 32 bytes"),
    };
    let seal = match SessionSeal::new("__Host-mfagw", keys) {
        Ok(seal) => seal,
        Err(error) => panic!("{error}"),
    };
    let cookie = match seal.seal(&realistic_session()) {
        Ok(cookie) => cookie,
        Err(error) => panic!("{error}"),
    };
    let idle_timeout = Duration::from_secs(3600);

    c.bench_function("session open + check (5 groups)", |b| {
        b.iter(|| {
            let session = seal.open(black_box(&cookie));
            let admitted = session
                .as_ref()
                .is_some_and(|s| s.check(black_box(NOW), idle_timeout).is_ok());
            black_box((session, admitted))
        })
    });
}

criterion_group!(benches, open_and_check);
criterion_main!(benches);
