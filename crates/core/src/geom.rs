//! Geometry of atoms as EWKB and WKT: `GEOMETRYCOLLECTION ZM` of the atom's `POINT ZM` and,
//! for a composite, a `LINESTRING ZM` through its children (SRID 0).
//! (Being written; see the helper's brief.)

use crate::Position;

/// WKT of an atom's geometry, in PostGIS `ST_AsText` form.
pub fn wkt(own: &Position, children: &[Position]) -> String {
    let pt = |p: &Position| format!("{} {} {} {}", p.x, p.y, p.z, p.m);
    if children.is_empty() {
        format!("GEOMETRYCOLLECTION ZM (POINT ZM ({}))", pt(own))
    } else {
        let line: Vec<String> = children.iter().map(pt).collect();
        format!(
            "GEOMETRYCOLLECTION ZM (POINT ZM ({}),LINESTRING ZM ({}))",
            pt(own),
            line.join(",")
        )
    }
}
