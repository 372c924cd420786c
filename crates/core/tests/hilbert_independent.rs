//! Our Hilbert curve against two independent implementations, at full 28-bit order.
//!
//! 1. The `fast_hilbert` crate (its own 3-bit lookup tables): `xy2h(x, y, 28)` and
//!    `h2xy::<u32>(d, 28)`. Same orientation as ours, no symmetry mapping needed: starts at
//!    (0,0), first-order pattern (0,0),(0,1),(1,1),(1,0), ends at (2^28-1, 0).
//! 2. The textbook `xy2d` / `d2xy` / `rot` from Wikipedia's "Hilbert curve" article, written
//!    out below in its own style (arithmetic on `n`, bottom-up inverse), sharing no code with
//!    `hart_core::hilbert`.
//!
//! Equality is exact on every sample.

use hart_core::hilbert::{decode, encode, ORDER};

const N: i64 = 1 << ORDER;

/// Wikipedia's `rot`: rotate/flip a quadrant appropriately.
fn rot(n: i64, x: &mut i64, y: &mut i64, rx: i64, ry: i64) {
    if ry == 0 {
        if rx == 1 {
            *x = n - 1 - *x;
            *y = n - 1 - *y;
        }
        std::mem::swap(x, y);
    }
}

/// Wikipedia's `xy2d`: convert (x,y) to d.
fn wiki_xy2d(n: i64, mut x: i64, mut y: i64) -> i64 {
    let mut d = 0;
    let mut s = n / 2;
    while s > 0 {
        let rx = i64::from((x & s) > 0);
        let ry = i64::from((y & s) > 0);
        d += s * s * ((3 * rx) ^ ry);
        rot(n, &mut x, &mut y, rx, ry);
        s /= 2;
    }
    d
}

/// Wikipedia's `d2xy`: convert d to (x,y).
fn wiki_d2xy(n: i64, d: i64) -> (i64, i64) {
    let (mut x, mut y) = (0, 0);
    let mut t = d;
    let mut s = 1;
    while s < n {
        let rx = 1 & (t / 2);
        let ry = 1 & (t ^ rx);
        rot(s, &mut x, &mut y, rx, ry);
        x += s * rx;
        y += s * ry;
        t /= 4;
        s *= 2;
    }
    (x, y)
}

/// SplitMix64: a fixed, dependency-free sample stream (the run is reproducible).
struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// A coordinate of random bit length 0..=28, so small and large values both occur.
    fn coord(&mut self) -> u32 {
        let r = self.next();
        let bits = (r % 29) as u32;
        ((r >> 8) as u32) & ((1u64 << bits) - 1) as u32
    }
}

fn check_point(x: u32, y: u32) {
    let d = encode(x, y);
    assert_eq!(d, fast_hilbert::xy2h(x, y, ORDER as u8), "fast_hilbert at ({x},{y})");
    assert_eq!(d as i64, wiki_xy2d(N, i64::from(x), i64::from(y)), "textbook at ({x},{y})");
}

fn check_index(d: u64) {
    let p = decode(d);
    assert_eq!(p, fast_hilbert::h2xy::<u32>(d, ORDER as u8), "fast_hilbert at {d}");
    let (wx, wy) = wiki_d2xy(N, d as i64);
    assert_eq!((i64::from(p.0), i64::from(p.1)), (wx, wy), "textbook at {d}");
}

#[test]
fn corners_and_edges() {
    let max = (1u32 << ORDER) - 1;
    for &(x, y) in &[
        (0, 0),
        (max, 0),
        (0, max),
        (max, max),
        (1 << 27, 0),
        (0, 1 << 27),
        ((1 << 27) - 1, (1 << 27) - 1),
        (1 << 27, 1 << 27),
    ] {
        check_point(x, y);
        check_index(encode(x, y));
    }
    for d in [0, 1, 2, 3, 4, (1 << 54) - 1, 1 << 54, (1 << 56) - 2, (1 << 56) - 1] {
        check_index(d);
    }
}

#[test]
fn exhaustive_small_corner() {
    for x in 0..64 {
        for y in 0..64 {
            check_point(x, y);
        }
    }
    for d in 0..4096 {
        check_index(d);
    }
}

#[test]
fn random_points_at_full_order() {
    let mut r = SplitMix(1);
    for _ in 0..200_000 {
        let (x, y) = (r.coord(), r.coord());
        check_point(x, y);
        // Uniform full-width points too.
        let v = r.next();
        check_point((v as u32) >> 4, ((v >> 32) as u32) >> 4);
    }
}

#[test]
fn random_indices_at_full_order() {
    let mut r = SplitMix(2);
    for _ in 0..200_000 {
        let v = r.next();
        check_index(v >> 8);
        // Indices of random bit length.
        check_index((v >> 8) & ((1u64 << (v % 57)) - 1));
    }
}
