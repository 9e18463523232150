//! Races of conflicting requests released together: exactly one may win.

use std::sync::{Arc, Barrier};

use slashing::{Error, Permit, Refusal, SlashingProtection};

pub const THREADS: usize = 200;

/// `THREADS` threads released together by a barrier; thread i uses
/// `stores[i % stores.len()]`. Returns the verdicts.
pub fn race(
    stores: Vec<Arc<dyn SlashingProtection>>,
    f: impl Fn(&dyn SlashingProtection, usize) -> Result<Permit, Error> + Send + Sync + 'static,
) -> Vec<Result<Permit, Error>> {
    let barrier = Arc::new(Barrier::new(THREADS));
    let f = Arc::new(f);
    let handles: Vec<_> = (0..THREADS)
        .map(|i| {
            let (b, f, s) = (barrier.clone(), f.clone(), stores[i % stores.len()].clone());
            std::thread::spawn(move || {
                b.wait();
                f(&*s, i)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

pub fn exactly_one_winner(results: &[Result<Permit, Error>], conflict: Refusal) {
    let winners = results
        .iter()
        .filter(|r| matches!(r, Ok(Permit::New)))
        .count();
    assert_eq!(winners, 1, "exactly one Ok(New) expected: {results:?}");
    for r in results {
        match r {
            Ok(Permit::New) => {}
            Err(Error::Refused(x)) => assert_eq!(*x, conflict),
            other => panic!("unexpected {other:?}"),
        }
    }
}

pub fn one_winner_suite(stores: Vec<Arc<dyn SlashingProtection>>) {
    // Same target epoch, different roots (and sources) ⇒ double votes.
    let r = race(stores.clone(), |s, i| {
        s.sign_attestation(
            super::GVR,
            super::pk(1),
            (i % 5) as u64,
            10,
            super::root(i as u64 + 1),
        )
    });
    exactly_one_winner(&r, Refusal::DoubleVote);
    // Same slot, different roots ⇒ double proposals.
    let r = race(stores.clone(), |s, i| {
        s.sign_block(super::GVR, super::pk(2), 42, super::root(i as u64 + 1))
    });
    exactly_one_winner(&r, Refusal::DoubleBlockProposal);
    // Mutually surrounding votes: (10-k, 20+k) all surround each other.
    let r = race(stores, |s, i| {
        let k = (i % 10) as u64;
        s.sign_attestation(
            super::GVR,
            super::pk(3),
            10 - k,
            20 + k,
            super::root(i as u64 + 1),
        )
    });
    let winners = r.iter().filter(|x| matches!(x, Ok(Permit::New))).count();
    assert_eq!(winners, 1, "{r:?}");
}
