//! 2-D Hilbert curve over 28-bit coordinates (56-bit indices), with its exact inverse.
//!
//! # Orientation (normative: docs/FORMAT.md cites this)
//!
//! The curve is the classic one of Wikipedia's `xy2d`/`d2xy` with `n = 2^28`, and equals
//! `fast_hilbert::xy2h(x, y, 28)` (both are checked in `tests/hilbert_independent.rs`):
//!
//! * it starts at `(0, 0)` (`d = 0`) and ends at `(2^28 - 1, 0)` (`d = 2^56 - 1`);
//! * the top level visits the four quadrants in the order lower-left, upper-left,
//!   upper-right, lower-right, where "upper" means the high bit of `y` is set and "right"
//!   the high bit of `x`. Quadrant `q` (0..=3) holds indices `q·2^54 .. (q+1)·2^54`;
//! * inside a quadrant the sub-curve is the parent pattern transformed so that the curve is
//!   continuous: the lower-left quadrant is transposed (x ↔ y), the lower-right quadrant is
//!   transposed across the anti-diagonal (x ↔ y, then both complemented), the two upper ones
//!   are untransformed. The same rule applies at every level;
//! * hence the order-1 pattern is `(0,0)→0, (0,1)→1, (1,1)→2, (1,0)→3`, and because the
//!   order (28) is even the first steps of the full curve are
//!   `(0,0)→0, (1,0)→1, (1,1)→2, (0,1)→3, (0,2)→4`.
//!
//! Consecutive indices are always unit-distance neighbours, and the curve is 1/2-Hölder:
//! `|p(a) - p(b)|² ≤ 6·|a - b|` in practice, so indices close together are points close
//! together. The converse only holds on average (neighbouring points can straddle a
//! quadrant boundary and get distant indices).
//!
//! # Implementation
//!
//! A four-state machine (the state is which of transpose / complement is in force for the
//! remaining low bits; the two commute, so a state is just two XOR-able bits). Tables built
//! at compile time advance it four bits of each coordinate (one byte of index) per step, so
//! a full 28-bit conversion is seven table look-ups.

/// Bits per coordinate handled by [`encode`] / [`decode`].
pub const ORDER: u32 = 28;

/// Bits per coordinate consumed per table step.
const STEP: u32 = 4;
const STEPS: u32 = ORDER / STEP;
const _: () = assert!(STEPS * STEP == ORDER);

/// State bit: x and y are swapped for the remaining low bits.
const SWAP: u8 = 1;
/// State bit: x and y are both complemented for the remaining low bits.
const FLIP: u8 = 2;

/// One level of the curve: given the state and the original bits `(bx, by)`, the quadrant
/// index (0..=3) and the next state.
const fn step_xy(state: u8, bx: u32, by: u32) -> (u32, u8) {
    let (mut rx, mut ry) = (bx, by);
    if state & FLIP != 0 {
        rx ^= 1;
        ry ^= 1;
    }
    if state & SWAP != 0 {
        let t = rx;
        rx = ry;
        ry = t;
    }
    let q = (3 * rx) ^ ry;
    (q, next_state(state, rx, ry))
}

/// One level of the inverse: given the state and the quadrant index, the original bits and
/// the next state.
const fn step_d(state: u8, q: u32) -> (u32, u32, u8) {
    let rx = q >> 1;
    let ry = (q ^ rx) & 1;
    let (mut bx, mut by) = (rx, ry);
    // Swap and complement commute and are involutions: undoing them is applying them.
    if state & SWAP != 0 {
        let t = bx;
        bx = by;
        by = t;
    }
    if state & FLIP != 0 {
        bx ^= 1;
        by ^= 1;
    }
    (bx, by, next_state(state, rx, ry))
}

/// Quadrants with `ry == 0` are transposed; the one with `rx == 1` also complemented.
const fn next_state(state: u8, rx: u32, ry: u32) -> u8 {
    if ry == 0 {
        state ^ SWAP ^ if rx == 1 { FLIP } else { 0 }
    } else {
        state
    }
}

/// `ENC[state << 8 | xnib << 4 | ynib]` = `next_state << 8 | 8 index bits`.
static ENC: [u16; 1024] = build_enc();
/// `DEC[state << 8 | index byte]` = `next_state << 8 | xnib << 4 | ynib`.
static DEC: [u16; 1024] = build_dec();

const fn build_enc() -> [u16; 1024] {
    let mut t = [0u16; 1024];
    let mut i = 0;
    while i < 1024 {
        let mut state = (i >> 8) as u8;
        let (xn, yn) = ((i >> 4) as u32 & 15, i as u32 & 15);
        let mut d = 0u32;
        let mut b = STEP;
        while b > 0 {
            b -= 1;
            let (q, s) = step_xy(state, (xn >> b) & 1, (yn >> b) & 1);
            d = (d << 2) | q;
            state = s;
        }
        t[i] = ((state as u16) << 8) | d as u16;
        i += 1;
    }
    t
}

const fn build_dec() -> [u16; 1024] {
    let mut t = [0u16; 1024];
    let mut i = 0;
    while i < 1024 {
        let mut state = (i >> 8) as u8;
        let byte = i as u32 & 0xff;
        let (mut xn, mut yn) = (0u32, 0u32);
        let mut b = STEP;
        while b > 0 {
            b -= 1;
            let (bx, by, s) = step_d(state, (byte >> (2 * b)) & 3);
            xn = (xn << 1) | bx;
            yn = (yn << 1) | by;
            state = s;
        }
        t[i] = ((state as u16) << 8) | (xn << 4 | yn) as u16;
        i += 1;
    }
    t
}

/// Hilbert index of `(x, y)`. Only the low 28 bits of each coordinate are used (callers pass
/// valid positions; higher bits are ignored, not an error). The result is below 2^56.
#[inline]
pub fn encode(x: u32, y: u32) -> u64 {
    let mut state = 0usize;
    let mut d = 0u64;
    let mut shift = ORDER;
    for _ in 0..STEPS {
        shift -= STEP;
        let xn = (x >> shift) as usize & 15;
        let yn = (y >> shift) as usize & 15;
        let e = ENC[(state << 8) | (xn << 4) | yn];
        d = (d << 8) | u64::from(e & 0xff);
        state = usize::from(e >> 8);
    }
    d
}

/// Inverse of [`encode`]: the point with Hilbert index `d`. Only the low 56 bits of `d` are
/// used.
#[inline]
pub fn decode(d: u64) -> (u32, u32) {
    let mut state = 0usize;
    let (mut x, mut y) = (0u32, 0u32);
    let mut shift = 2 * ORDER;
    for _ in 0..STEPS {
        shift -= 2 * STEP;
        let e = DEC[(state << 8) | ((d >> shift) as usize & 0xff)];
        x = (x << STEP) | u32::from((e >> 4) & 15);
        y = (y << STEP) | u32::from(e & 15);
        state = usize::from(e >> 8);
    }
    (x, y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: u32 = (1 << ORDER) - 1;

    /// Bit-at-a-time reference built from the same level rule, without tables.
    fn encode_bitwise(x: u32, y: u32) -> u64 {
        let mut state = 0u8;
        let mut d = 0u64;
        for b in (0..ORDER).rev() {
            let (q, s) = step_xy(state, (x >> b) & 1, (y >> b) & 1);
            d = (d << 2) | u64::from(q);
            state = s;
        }
        d
    }

    /// Index within an order-`k` curve: the order-28 curve restricted to its first `4^k`
    /// cells is the order-`k` curve when `k` is even, its transpose when `k` is odd.
    fn encode_order(k: u32, x: u32, y: u32) -> u64 {
        if k & 1 == 0 {
            encode(x, y)
        } else {
            encode(y, x)
        }
    }

    #[test]
    fn first_order_by_hand() {
        // Order 1: (0,0) → (0,1) → (1,1) → (1,0).
        assert_eq!(encode_order(1, 0, 0), 0);
        assert_eq!(encode_order(1, 0, 1), 1);
        assert_eq!(encode_order(1, 1, 1), 2);
        assert_eq!(encode_order(1, 1, 0), 3);
        // The same pattern at the top level of the full curve: quadrant starts.
        let h = 1u32 << (ORDER - 1);
        let quarter = 1u64 << (2 * ORDER - 2);
        assert_eq!(encode(0, 0), 0);
        assert_eq!(encode(0, h) / quarter, 1);
        assert_eq!(encode(h, h) / quarter, 2);
        assert_eq!(encode(h, 0) / quarter, 3);
        // Start and end corners.
        assert_eq!(decode(0), (0, 0));
        assert_eq!(decode((1 << 56) - 1), (MAX, 0));
        assert_eq!(encode(MAX, 0), (1 << 56) - 1);
    }

    #[test]
    fn second_order_by_hand() {
        // Order 2, drawn with y upwards (row 0 printed last):
        //   5  6  9 10
        //   4  7  8 11
        //   3  2 13 12
        //   0  1 14 15
        #[rustfmt::skip]
        let grid: [[u64; 4]; 4] = [
            [0, 1, 14, 15],
            [3, 2, 13, 12],
            [4, 7, 8, 11],
            [5, 6, 9, 10],
        ];
        for (y, row) in grid.iter().enumerate() {
            for (x, &d) in row.iter().enumerate() {
                assert_eq!(encode_order(2, x as u32, y as u32), d, "({x},{y})");
                assert_eq!(decode(d), (x as u32, y as u32), "d={d}");
            }
        }
    }

    #[test]
    fn walk_of_256_by_256_subgrid_is_unit_steps_and_covers_it() {
        // The first 2^16 indices fill the 2^8 × 2^8 corner square exactly once.
        let mut seen = vec![false; 1 << 16];
        let mut prev = decode(0);
        for d in 0..(1u64 << 16) {
            let (x, y) = decode(d);
            assert!(x < 256 && y < 256, "d={d} left the corner: ({x},{y})");
            let cell = (y as usize) << 8 | x as usize;
            assert!(!seen[cell], "({x},{y}) visited twice");
            seen[cell] = true;
            assert_eq!(encode(x, y), d);
            if d > 0 {
                assert_eq!(x.abs_diff(prev.0) + y.abs_diff(prev.1), 1, "step {d}");
            }
            prev = (x, y);
        }
    }

    #[test]
    fn aligned_blocks_at_full_order_are_unit_step_walks_of_a_square() {
        // Any aligned run of 2^16 indices fills one aligned 256 × 256 square; check the first,
        // the last and some in between, at full order.
        let blocks = (1u64 << 40) - 1;
        for block in [0, 1, 12345, 1 << 20, 0xdead_beef, blocks / 3, blocks - 1, blocks] {
            let base = block << 16;
            let (x0, y0) = decode(base);
            let (sx, sy) = (x0 & !255, y0 & !255);
            let mut seen = vec![false; 1 << 16];
            let mut prev = (x0, y0);
            for d in base..base + (1 << 16) {
                let (x, y) = decode(d);
                assert_eq!((x & !255, y & !255), (sx, sy), "d={d} left its square");
                let cell = ((y & 255) as usize) << 8 | (x & 255) as usize;
                assert!(!seen[cell], "({x},{y}) visited twice");
                seen[cell] = true;
                assert_eq!(encode(x, y), d);
                if d > base {
                    assert_eq!(x.abs_diff(prev.0) + y.abs_diff(prev.1), 1, "step {d}");
                }
                prev = (x, y);
            }
        }
    }

    #[test]
    fn tables_agree_with_bitwise_reference() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let (x, y) = ((s >> 8) as u32 & MAX, (s >> 36) as u32 & MAX);
            assert_eq!(encode(x, y), encode_bitwise(x, y));
        }
    }

    #[test]
    fn ignores_bits_above_the_order() {
        assert_eq!(encode(0xf000_0001, 0xf000_0002), encode(1, 2));
        assert_eq!(decode(0xff00_0000_0000_0005), decode(5));
    }

    proptest! {
        #[test]
        fn consecutive_indices_are_neighbours(d in 0u64..(1 << 56) - 1) {
            let (x0, y0) = decode(d);
            let (x1, y1) = decode(d + 1);
            prop_assert_eq!(x0.abs_diff(x1) + y0.abs_diff(y1), 1);
        }

        #[test]
        fn decode_then_encode(d in 0u64..(1 << 56)) {
            let (x, y) = decode(d);
            prop_assert!(x <= MAX && y <= MAX);
            prop_assert_eq!(encode(x, y), d);
        }

        #[test]
        fn encode_then_decode(x in 0..=MAX, y in 0..=MAX) {
            let d = encode(x, y);
            prop_assert!(d < 1 << 56);
            prop_assert_eq!(decode(d), (x, y));
        }

        /// Close indices are close points: squared distance at most 6 × index gap (gaps drawn
        /// log-uniformly from 1 to 2^40).
        #[test]
        fn close_indices_are_close_points(d in 0u64..(1 << 56) - (1 << 40), k in 0u32..40, r in any::<u64>()) {
            let gap = 1 + r % (1u64 << k);
            let (x0, y0) = decode(d);
            let (x1, y1) = decode(d + gap);
            let dx = u128::from(x0.abs_diff(x1));
            let dy = u128::from(y0.abs_diff(y1));
            prop_assert!(dx * dx + dy * dy <= 6 * u128::from(gap), "gap {} gave ({},{})", gap, dx, dy);
        }
    }
}
