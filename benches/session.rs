//! Opening and checking the session cookie happens on every request to an `mfa` route, before
//! anything reaches Exchange. Goal: under 5 µs for a realistic cookie.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use mfa_gateway::session::{SessionKey, SessionSeal};

mod common;

use common::{realistic_session, NOW};

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
    let cookie = match seal.seal(&realistic_session(
        "72f988bf-86f1-41af-91ab-2d7cd011db47",
        5,
    )) {
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
