//! Geometry of atoms as EWKB, WKT and GeoJSON: a `GEOMETRYCOLLECTION ZM` (SRID 0) of the
//! atom's own `POINT ZM` and, for a composite, a `LINESTRING ZM` through its children's
//! positions in order (DESIGN.md §2).
//!
//! The layouts match PostGIS 3.3 byte for byte (`ST_AsEWKB`) and character for character
//! (`ST_AsText`); they were checked against a running PostGIS 3.3.2 and are locked by golden
//! vectors in `tests/golden.rs`. For `own = (1,2,3,4)` and children `(1,2,3,4), (5,6,7,8)`:
//!
//! ```text
//! WKT:  GEOMETRYCOLLECTION ZM (POINT ZM (1 2 3 4),LINESTRING ZM (1 2 3 4,5 6 7 8))
//! EWKB: 01 070000c0 02000000                 NDR, collection|Z|M, 2 members
//!       01 010000c0 <x y z m as f64 LE>      NDR, point|Z|M
//!       01 020000c0 02000000 <2 × 4 f64 LE>  NDR, linestring|Z|M, 2 points
//! ```
//!
//! A leaf's collection has one member (the point). A composite always has at least two
//! children in this design (a group of one passes its child through), but the children may
//! all be the same atom, or share one position: the line is then degenerate (zero length;
//! PostGIS's `ST_IsValid` says "Too few points"). That is still the exact structure, and it
//! round-trips; it is simply not a valid OGC linestring, so don't run validity-dependent
//! GEOS operations on it.

use std::fmt::Write as _;

use crate::position::COORD_MAX;
use crate::Position;

/// EWKB flag on the type word: the geometry has Z.
const EWKB_Z: u32 = 0x8000_0000;
/// EWKB flag on the type word: the geometry has M.
const EWKB_M: u32 = 0x4000_0000;
/// EWKB flag on the type word: an SRID follows the type word.
const EWKB_SRID: u32 = 0x2000_0000;
const WKB_POINT: u32 = 1;
const WKB_LINESTRING: u32 = 2;
const WKB_COLLECTION: u32 = 7;
/// ISO WKB adds this to the base type for ZM geometries (`ST_AsBinary` writes it).
const ISO_ZM: u32 = 3000;

/// Byte order marker of little-endian (NDR) WKB.
const NDR: u8 = 1;
/// Byte order marker of big-endian (XDR) WKB.
const XDR: u8 = 0;

/// Why bytes are not the geometry of an atom. Offsets are from the start of the input.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GeomError {
    #[error("geometry truncated at byte {offset}: {what} needs {needed} bytes, {available} left")]
    Truncated { offset: usize, what: &'static str, needed: usize, available: usize },
    #[error("byte {offset}: byte-order marker {found:#04x}, expected 0x01 (NDR) or 0x00 (XDR)")]
    ByteOrder { offset: usize, found: u8 },
    #[error(
        "byte {offset}: geometry type word {found:#010x}, expected {expected} with Z and M \
         (EWKB flags 0xc0000000 or ISO code +3000)"
    )]
    GeometryType { offset: usize, expected: &'static str, found: u32 },
    #[error("byte {offset}: SRID {srid}, expected 0 (atoms live in SRID 0)")]
    Srid { offset: usize, srid: u32 },
    #[error(
        "byte {offset}: collection of {count} members, expected 1 (a leaf's point) or 2 \
         (a composite's point and linestring)"
    )]
    MemberCount { offset: usize, count: u32 },
    #[error("byte {offset}: linestring of 0 points; a composite has at least one child")]
    EmptyLine { offset: usize },
    #[error("byte {offset}: coordinate {axis} = {value} is not an integer in 0..=268435455 (2^28 - 1)")]
    Coordinate { offset: usize, axis: char, value: f64 },
    #[error("byte {offset}: {count} bytes after the end of the geometry")]
    TrailingBytes { offset: usize, count: usize },
}

/// WKT of an atom's geometry, exactly as PostGIS `ST_AsText` prints it (ISO WKT: ` ZM `
/// qualifiers on every member, `,` between members and points without spaces, integer
/// coordinates without decimals).
pub fn wkt(own: &Position, children: &[Position]) -> String {
    let mut s = String::with_capacity(48 + 40 * (children.len() + 1));
    s.push_str("GEOMETRYCOLLECTION ZM (POINT ZM (");
    push_coords(&mut s, own);
    s.push(')');
    if !children.is_empty() {
        s.push_str(",LINESTRING ZM (");
        for (i, c) in children.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            push_coords(&mut s, c);
        }
        s.push(')');
    }
    s.push(')');
    s
}

fn push_coords(s: &mut String, p: &Position) {
    // Writing to a String cannot fail.
    let _ = write!(s, "{} {} {} {}", p.x, p.y, p.z, p.m);
}

/// EWKB of an atom's geometry, exactly as PostGIS `ST_AsEWKB` produces it for SRID 0:
/// little-endian (NDR), no SRID, Z and M flags on every type word, coordinates as `f64`
/// (exact for 28-bit integers).
pub fn ewkb(own: &Position, children: &[Position]) -> Vec<u8> {
    let line = if children.is_empty() { 0 } else { 9 + 32 * children.len() };
    let mut b = Vec::with_capacity(9 + 37 + line);
    let members: u32 = if children.is_empty() { 1 } else { 2 };
    header(&mut b, WKB_COLLECTION);
    b.extend_from_slice(&members.to_le_bytes());
    header(&mut b, WKB_POINT);
    push_point(&mut b, own);
    if !children.is_empty() {
        header(&mut b, WKB_LINESTRING);
        let n = u32::try_from(children.len()).expect("fewer than 2^32 children");
        b.extend_from_slice(&n.to_le_bytes());
        for c in children {
            push_point(&mut b, c);
        }
    }
    b
}

fn header(b: &mut Vec<u8>, kind: u32) {
    b.push(NDR);
    b.extend_from_slice(&(kind | EWKB_Z | EWKB_M).to_le_bytes());
}

fn push_point(b: &mut Vec<u8>, p: &Position) {
    for c in p.coords() {
        b.extend_from_slice(&f64::from(c).to_le_bytes());
    }
}

/// Parse the geometry of an atom back into its own position and its children's positions
/// (empty for a leaf). Accepts what [`ewkb`] writes, and also big-endian (XDR) parts, an
/// SRID flag with SRID 0, and ISO WKB type codes (`ST_AsBinary` output: 3001/3002/3007).
/// Rejects anything else, and coordinates that are not integers in `0..2^28`.
pub fn decode_ewkb(bytes: &[u8]) -> Result<(Position, Vec<Position>), GeomError> {
    let mut r = Reader { bytes, pos: 0 };
    let le = r.header(WKB_COLLECTION, "GEOMETRYCOLLECTION")?;
    let count_at = r.pos;
    let count = r.u32(le, "member count")?;
    if !(1..=2).contains(&count) {
        return Err(GeomError::MemberCount { offset: count_at, count });
    }
    let le = r.header(WKB_POINT, "POINT")?;
    let own = r.point(le)?;
    let mut children = Vec::new();
    if count == 2 {
        let le = r.header(WKB_LINESTRING, "LINESTRING")?;
        let n_at = r.pos;
        let n = r.u32(le, "point count")? as usize;
        if n == 0 {
            return Err(GeomError::EmptyLine { offset: n_at });
        }
        // Check the length before allocating for a count read from untrusted bytes.
        r.need(n.saturating_mul(32), "linestring points")?;
        children.reserve_exact(n);
        for _ in 0..n {
            children.push(r.point(le)?);
        }
    }
    if r.pos != bytes.len() {
        return Err(GeomError::TrailingBytes { offset: r.pos, count: bytes.len() - r.pos });
    }
    Ok((own, children))
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn need(&self, n: usize, what: &'static str) -> Result<(), GeomError> {
        let available = self.bytes.len() - self.pos;
        if available < n {
            return Err(GeomError::Truncated { offset: self.pos, what, needed: n, available });
        }
        Ok(())
    }

    fn take<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GeomError> {
        self.need(N, what)?;
        let b: [u8; N] = self.bytes[self.pos..self.pos + N].try_into().expect("length checked");
        self.pos += N;
        Ok(b)
    }

    fn u32(&mut self, le: bool, what: &'static str) -> Result<u32, GeomError> {
        let b = self.take::<4>(what)?;
        Ok(if le { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) })
    }

    /// Byte order, type word and optional SRID of one geometry; returns "is little-endian".
    fn header(&mut self, kind: u32, name: &'static str) -> Result<bool, GeomError> {
        let at = self.pos;
        let [order] = self.take::<1>("byte-order marker")?;
        let le = match order {
            NDR => true,
            XDR => false,
            found => return Err(GeomError::ByteOrder { offset: at, found }),
        };
        let type_at = self.pos;
        let word = self.u32(le, "geometry type")?;
        let ewkb_zm = word & !EWKB_SRID == kind | EWKB_Z | EWKB_M;
        let iso_zm = word == kind + ISO_ZM;
        if !(ewkb_zm || iso_zm) {
            return Err(GeomError::GeometryType { offset: type_at, expected: name, found: word });
        }
        if word & EWKB_SRID != 0 {
            let srid_at = self.pos;
            let srid = self.u32(le, "SRID")?;
            if srid != 0 {
                return Err(GeomError::Srid { offset: srid_at, srid });
            }
        }
        Ok(le)
    }

    fn point(&mut self, le: bool) -> Result<Position, GeomError> {
        let mut c = [0u32; 4];
        for (slot, axis) in c.iter_mut().zip(['x', 'y', 'z', 'm']) {
            let at = self.pos;
            let b = self.take::<8>("coordinate")?;
            let value = if le { f64::from_le_bytes(b) } else { f64::from_be_bytes(b) };
            // Also rejects NaN and infinities; -0.0 is the integer 0.
            if !(value >= 0.0 && value <= f64::from(COORD_MAX) && value.fract() == 0.0) {
                return Err(GeomError::Coordinate { offset: at, axis, value });
            }
            *slot = value as u32;
        }
        Ok(Position::from_coords(c))
    }
}

/// GeoJSON (RFC 7946) of an atom's geometry: a `GeometryCollection` of a `Point` and, for a
/// composite, a `LineString`, in PostGIS's compact style.
///
/// GeoJSON has no M: each position is written as the four-element array `[x, y, z, m]`.
/// RFC 7946 §3.1.1 discourages (SHOULD NOT) positions beyond three elements, so generic
/// GeoJSON readers may ignore or drop `m`; PostGIS's own `ST_AsGeoJSON` drops it. We keep
/// it because the geometry must carry the whole position.
pub fn geojson(own: &Position, children: &[Position]) -> String {
    let mut s = String::with_capacity(96 + 40 * (children.len() + 1));
    s.push_str(r#"{"type":"GeometryCollection","geometries":[{"type":"Point","coordinates":"#);
    push_json_coords(&mut s, own);
    s.push('}');
    if !children.is_empty() {
        s.push_str(r#",{"type":"LineString","coordinates":["#);
        for (i, c) in children.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            push_json_coords(&mut s, c);
        }
        s.push_str("]}");
    }
    s.push_str("]}");
    s
}

fn push_json_coords(s: &mut String, p: &Position) {
    // Writing to a String cannot fail.
    let _ = write!(s, "[{},{},{},{}]", p.x, p.y, p.z, p.m);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn position() -> impl Strategy<Value = Position> {
        proptest::array::uniform4(0..=COORD_MAX).prop_map(Position::from_coords)
    }

    fn p(x: u32, y: u32, z: u32, m: u32) -> Position {
        Position::new(x, y, z, m)
    }

    /// Hex of `ST_AsEWKB('GEOMETRYCOLLECTION ZM (POINT ZM (1 2 3 4),LINESTRING ZM
    /// (1 2 3 4,5 6 7 8))'::geometry)` from PostGIS 3.3.2.
    const POSTGIS_COMPOSITE_NDR: &str = "01070000c00200000001010000c0000000000000f03f0000000000\
        0000400000000000000840000000000000104001020000c002000000000000000000f03f00000000000000\
        400000000000000840000000000000104000000000000014400000000000001840000000000000\
        1c400000000000002040";
    /// The same geometry from `ST_AsEWKB(g, 'XDR')`.
    const POSTGIS_COMPOSITE_XDR: &str = "00c00000070000000200c00000013ff00000000000004000000000\
        0000004008000000000000401000000000000000c0000002000000023ff000000000000040000000000000\
        004008000000000000401000000000000040140000000000004018000000000000401c00000000000040\
        20000000000000";
    /// The same geometry from `ST_AsBinary(g)` (ISO WKB, type codes +3000).
    const POSTGIS_COMPOSITE_ISO: &str = "01bf0b00000200000001b90b0000000000000000f03f0000000000\
        0000400000000000000840000000000000104001ba0b000002000000000000000000f03f00000000000000\
        400000000000000840000000000000104000000000000014400000000000001840000000000000\
        1c400000000000002040";
    /// `ST_AsEWKB(ST_ForceCollection(ST_MakePoint(0, 268435455, 134217728, 7)))`.
    const POSTGIS_LEAF_NDR: &str = "01070000c00100000001010000c000000000000000000000\
        00feffffaf41000000000000a0410000000000001c40";

    fn composite() -> (Position, Vec<Position>) {
        (p(1, 2, 3, 4), vec![p(1, 2, 3, 4), p(5, 6, 7, 8)])
    }

    #[test]
    fn matches_postgis_output() {
        let (own, kids) = composite();
        assert_eq!(hex::encode(ewkb(&own, &kids)), POSTGIS_COMPOSITE_NDR);
        assert_eq!(wkt(&own, &kids), "GEOMETRYCOLLECTION ZM (POINT ZM (1 2 3 4),LINESTRING ZM (1 2 3 4,5 6 7 8))");
        let leaf = p(0, COORD_MAX, 1 << 27, 7);
        assert_eq!(hex::encode(ewkb(&leaf, &[])), POSTGIS_LEAF_NDR);
        assert_eq!(wkt(&leaf, &[]), "GEOMETRYCOLLECTION ZM (POINT ZM (0 268435455 134217728 7))");
    }

    #[test]
    fn decodes_every_postgis_flavour() {
        for h in [POSTGIS_COMPOSITE_NDR, POSTGIS_COMPOSITE_XDR, POSTGIS_COMPOSITE_ISO] {
            assert_eq!(decode_ewkb(&hex::decode(h).unwrap()), Ok(composite()), "{h}");
        }
        assert_eq!(decode_ewkb(&hex::decode(POSTGIS_LEAF_NDR).unwrap()), Ok((p(0, COORD_MAX, 1 << 27, 7), vec![])));
    }

    #[test]
    fn accepts_srid_zero_and_rejects_other_srids() {
        let own = p(9, 8, 7, 6);
        let mut b = ewkb(&own, &[]);
        b[4] |= 0x20; // SRID flag on the collection's type word (LE: high byte last)
        let mut with_srid = b[..5].to_vec();
        with_srid.extend_from_slice(&0u32.to_le_bytes());
        with_srid.extend_from_slice(&b[5..]);
        assert_eq!(decode_ewkb(&with_srid), Ok((own, vec![])));
        with_srid[5] = 0xe6; // SRID 4326 = 0x10e6
        with_srid[6] = 0x10;
        assert_eq!(decode_ewkb(&with_srid), Err(GeomError::Srid { offset: 5, srid: 4326 }));
    }

    #[test]
    fn rejects_bad_input_with_offsets() {
        let (own, kids) = composite();
        let good = ewkb(&own, &kids);

        // Layout: collection header 0..9, point 9..46, linestring header 46..51, point
        // count 51..55, points from 55.
        let e = decode_ewkb(&good[..good.len() - 3]).unwrap_err();
        assert_eq!(e, GeomError::Truncated { offset: 55, what: "linestring points", needed: 64, available: 61 });
        assert!(e.to_string().contains("byte 55"), "{e}");

        let mut bad = good.clone();
        bad[0] = 2;
        assert_eq!(decode_ewkb(&bad), Err(GeomError::ByteOrder { offset: 0, found: 2 }));

        // A POINT Z (no M) where the point should be.
        let mut bad = good.clone();
        bad[13] = 0x80;
        assert!(matches!(decode_ewkb(&bad), Err(GeomError::GeometryType { offset: 10, expected: "POINT", .. })));

        // x of the own point = 0.5.
        let mut bad = good.clone();
        bad[14..22].copy_from_slice(&0.5f64.to_le_bytes());
        let e = decode_ewkb(&bad).unwrap_err();
        assert_eq!(e, GeomError::Coordinate { offset: 14, axis: 'x', value: 0.5 });
        assert!(e.to_string().contains("byte 14"), "{e}");

        // m of the last child = 2^28, -1, NaN.
        for v in [f64::from(1u32 << 28), -1.0, f64::NAN, f64::INFINITY] {
            let mut bad = good.clone();
            let at = good.len() - 8;
            bad[at..].copy_from_slice(&v.to_le_bytes());
            assert!(
                matches!(decode_ewkb(&bad), Err(GeomError::Coordinate { offset, axis: 'm', .. }) if offset == at),
                "{v}"
            );
        }

        let mut bad = good.clone();
        bad.push(0);
        assert_eq!(decode_ewkb(&bad), Err(GeomError::TrailingBytes { offset: good.len(), count: 1 }));

        // Member counts other than 1 and 2.
        let mut bad = good.clone();
        bad[5] = 3;
        assert_eq!(decode_ewkb(&bad), Err(GeomError::MemberCount { offset: 5, count: 3 }));

        // An empty linestring, and one claiming 2^32 - 1 points (no huge allocation).
        let mut bad = good[..51].to_vec();
        bad.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(decode_ewkb(&bad), Err(GeomError::EmptyLine { offset: 51 }));
        let mut bad = good.clone();
        bad[51..55].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_ewkb(&bad), Err(GeomError::Truncated { offset: 55, .. })));

        assert!(matches!(decode_ewkb(&[]), Err(GeomError::Truncated { offset: 0, .. })));
    }

    #[test]
    fn geojson_shape() {
        let (own, kids) = composite();
        assert_eq!(
            geojson(&own, &kids),
            r#"{"type":"GeometryCollection","geometries":[{"type":"Point","coordinates":[1,2,3,4]},{"type":"LineString","coordinates":[[1,2,3,4],[5,6,7,8]]}]}"#
        );
        assert_eq!(
            geojson(&own, &[]),
            r#"{"type":"GeometryCollection","geometries":[{"type":"Point","coordinates":[1,2,3,4]}]}"#
        );
    }

    #[test]
    fn degenerate_line_round_trips() {
        // Children that are all one atom: a zero-length line, still exact structure.
        let c = p(3, 3, 3, 3);
        let kids = vec![c, c, c];
        assert_eq!(decode_ewkb(&ewkb(&c, &kids)), Ok((c, kids)));
    }

    proptest! {
        #[test]
        fn ewkb_round_trips(own in position(), kids in proptest::collection::vec(position(), 0..40)) {
            let b = ewkb(&own, &kids);
            let expected_len = if kids.is_empty() { 46 } else { 55 + 32 * kids.len() };
            prop_assert_eq!(b.len(), expected_len);
            prop_assert_eq!(decode_ewkb(&b), Ok((own, kids)));
        }

        #[test]
        fn wkt_has_one_vertex_per_child_plus_own(own in position(), kids in proptest::collection::vec(position(), 0..40)) {
            let w = wkt(&own, &kids);
            let body = w.trim_start_matches("GEOMETRYCOLLECTION ZM (");
            let vertices: Vec<&str> = body
                .split(['(', ')', ','])
                .map(str::trim)
                .filter(|s| s.split(' ').count() == 4 && s.split(' ').all(|n| n.parse::<u32>().is_ok()))
                .collect();
            prop_assert_eq!(vertices.len(), kids.len() + 1);
            prop_assert_eq!(w.matches("ZM").count(), if kids.is_empty() { 2 } else { 3 });
        }

        #[test]
        fn truncation_anywhere_is_an_error_not_a_panic(own in position(), kids in proptest::collection::vec(position(), 0..4), cut in any::<prop::sample::Index>()) {
            let b = ewkb(&own, &kids);
            let at = cut.index(b.len());
            prop_assert!(decode_ewkb(&b[..at]).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_ewkb(&b);
        }
    }
}
