//! The small spaces of blocks and attestations the exhaustive tests run through, and the
//! sequences over them.

use slashing::{Error, Permit, Refusal, Root};

pub const ROOTS: [Root; 2] = [Root([0xaa; 32]), Root([0xbb; 32])];

pub fn att_items() -> Vec<(u64, u64, usize)> {
    let mut pairs: Vec<(u64, u64)> = Vec::new();
    for s in 0..=7 {
        for t in s..=7 {
            pairs.push((s, t));
        }
    }
    pairs.extend([(1, 0), (5, 2), (7, 6)]); // source > target
    pairs
        .into_iter()
        .flat_map(|(s, t)| [(s, t, 0), (s, t, 1)])
        .collect()
}

pub fn block_items() -> Vec<(u64, usize)> {
    (0..=7).flat_map(|s| [(s, 0), (s, 1)]).collect()
}

/// All sequences of exactly `len` items; with `canonical`, the first item
/// uses root 0 (the two roots are interchangeable, halving the space).
pub fn sequences<T: Copy>(items: &[T], len: usize, canonical: impl Fn(&T) -> bool) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = items
        .iter()
        .filter(|i| canonical(i))
        .map(|i| vec![*i])
        .collect();
    for _ in 1..len {
        out = out
            .into_iter()
            .flat_map(|seq| {
                items.iter().map(move |i| {
                    let mut s = seq.clone();
                    s.push(*i);
                    s
                })
            })
            .collect();
    }
    out
}

pub fn verdict(r: Result<Permit, Error>) -> Result<Permit, Refusal> {
    match r {
        Ok(p) => Ok(p),
        Err(Error::Refused(r)) => Err(r),
        Err(e) => panic!("store fault: {e}"),
    }
}
