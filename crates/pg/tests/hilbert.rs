//! The Hilbert key computed in SQL (migration 0002) equals hart-core's, on edge cases and
//! random positions: encode, decode, and the full key of every modality.

mod common;

use common::TestDb;
use hart_core::{hilbert, HilbertKey, Modality, Position};

/// Deterministic pseudo-random coordinates below 2^28 (splitmix64).
fn coords(n: usize) -> Vec<(u32, u32)> {
    let mut s = 0x0123_4567_89ab_cdefu64;
    let mut next = || {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let max = (1u32 << hilbert::ORDER) - 1;
    let mut v = vec![(0, 0), (1, 0), (0, 1), (1, 1), (max, 0), (0, max), (max, max), (max / 2, max / 2 + 1)];
    while v.len() < n {
        let r = next();
        v.push(((r as u32) & max, ((r >> 32) as u32) & max));
    }
    v
}

#[tokio::test]
async fn sql_curve_equals_the_rust_curve() {
    let db = TestDb::migrated("hilbert").await;
    let c = db.client().await;
    let pts = coords(5000);
    let xs: Vec<i64> = pts.iter().map(|p| i64::from(p.0)).collect();
    let ys: Vec<i64> = pts.iter().map(|p| i64::from(p.1)).collect();
    let rows = c
        .query(
            "SELECT hart_hilbert_encode(u.x, u.y), d.x, d.y
             FROM unnest($1::bigint[], $2::bigint[]) WITH ORDINALITY AS u(x, y, i),
                  LATERAL hart_hilbert_decode(hart_hilbert_encode(u.x, u.y)) AS d
             ORDER BY i",
            &[&xs, &ys],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), pts.len());
    for ((x, y), row) in pts.iter().zip(&rows) {
        let d: i64 = row.get(0);
        assert_eq!(d as u64, hilbert::encode(*x, *y), "encode({x}, {y})");
        assert_eq!((row.get::<_, i64>(1), row.get::<_, i64>(2)), (i64::from(*x), i64::from(*y)), "decode");
    }
    // Out-of-range input is an error, not a wrong key.
    let err = c.query_one("SELECT hart_hilbert_encode(268435456, 0)", &[]).await.unwrap_err();
    assert_eq!(common::sqlstate(&err), "22003");
}

#[tokio::test]
async fn sql_key_equals_hilbert_key_for_every_modality() {
    let db = TestDb::migrated("hart_key").await;
    let c = db.client().await;
    let pts = coords(2002);
    let mut positions = Vec::new();
    for (i, pair) in pts.chunks(2).enumerate() {
        let m = Modality::ALL[i % Modality::ALL.len()];
        positions.push((m, Position::new(pair[0].0, pair[0].1, pair[1].0, pair[1].1)));
    }
    let ms: Vec<i16> = positions.iter().map(|(m, _)| i16::from(m.as_u8())).collect();
    let coord = |f: fn(&Position) -> u32| positions.iter().map(|(_, p)| i64::from(f(p))).collect::<Vec<i64>>();
    let (xs, ys, zs, mms) = (coord(|p| p.x), coord(|p| p.y), coord(|p| p.z), coord(|p| p.m));
    let rows = c
        .query(
            "SELECT (k).h_xy, (k).h_yz, (k).h_zm, (k2).h_xy, p.modality, p.x, p.y, p.z, p.m
             FROM (SELECT i, hart_key(md, x, y, z, m) AS k,
                          hart_key_of_point(md, ST_MakePoint(x, y, z, m)) AS k2
                   FROM unnest($1::smallint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[])
                        WITH ORDINALITY AS u(md, x, y, z, m, i)) s,
                  LATERAL hart_position((k).h_xy, (k).h_yz, (k).h_zm) AS p
             ORDER BY i",
            &[&ms, &xs, &ys, &zs, &mms],
        )
        .await
        .unwrap();
    for ((m, p), row) in positions.iter().zip(&rows) {
        let key = HilbertKey::new(*m, p);
        let got = (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64, row.get::<_, i64>(2) as u64);
        assert_eq!(got, (key.h_xy, key.h_yz, key.h_zm), "{m} {p:?}");
        assert_eq!(row.get::<_, i64>(3) as u64, key.h_xy, "key of the point");
        let back = (
            row.get::<_, i16>(4),
            row.get::<_, i64>(5),
            row.get::<_, i64>(6),
            row.get::<_, i64>(7),
            row.get::<_, i64>(8),
        );
        assert_eq!(back, (i16::from(m.as_u8()), i64::from(p.x), i64::from(p.y), i64::from(p.z), i64::from(p.m)));
    }
    // Not a position: fractional or out-of-range coordinates have no key; inconsistent
    // indices decode to nothing.
    let row = c
        .query_one(
            "SELECT hart_key_of_point(1::smallint, ST_MakePoint(0.5, 1, 2, 3)) IS NULL,
                    hart_key_of_point(1::smallint, ST_MakePoint(268435456, 1, 2, 3)) IS NULL,
                    hart_key_of_point(1::smallint, ST_MakePoint(1, 2, 3)) IS NULL,
                    (hart_position(0, 5, 7)).x IS NULL",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0) && row.get::<_, bool>(1) && row.get::<_, bool>(2) && row.get::<_, bool>(3));
}

/// Migration 0014: the key functions run in C (the hart_native extension, which
/// scripts/pg.sh builds and installs), and the C functions and the PL/pgSQL ones they replace
/// give the same answers: the Rust curve's, on random positions, wrong keys and non-positions.
#[tokio::test]
async fn c_and_plpgsql_key_functions_agree() {
    let db = TestDb::migrated("hilbert_native").await;
    let c = db.client().await;
    let native: bool = c.query_one("SELECT hart_hilbert_native()", &[]).await.unwrap().get(0);
    assert!(
        native,
        "the key functions run in PL/pgSQL: the hart_native extension is not installed on this server \
         (scripts/pg.sh start builds and installs crates/pg/native; it needs postgresql-server-dev, make and gcc)"
    );

    let pts = coords(4000);
    let xs: Vec<i64> = pts.iter().map(|p| i64::from(p.0)).collect();
    let ys: Vec<i64> = pts.iter().map(|p| i64::from(p.1)).collect();
    let rows = c
        .query(
            "SELECT hart_native_hilbert_encode(u.x, u.y), hart_hilbert_encode_plpgsql(u.x, u.y),
                    hart_hilbert_encode(u.x, u.y)
             FROM unnest($1::bigint[], $2::bigint[]) WITH ORDINALITY AS u(x, y, i) ORDER BY i",
            &[&xs, &ys],
        )
        .await
        .unwrap();
    for ((x, y), row) in pts.iter().zip(&rows) {
        let want = hilbert::encode(*x, *y) as i64;
        let got = (row.get::<_, i64>(0), row.get::<_, i64>(1), row.get::<_, i64>(2));
        assert_eq!(got, (want, want, want), "encode({x}, {y}): C, PL/pgSQL, the wrapper");
    }
    let err = c.query_one("SELECT hart_native_hilbert_encode(0, -1)", &[]).await.unwrap_err();
    assert_eq!(common::sqlstate(&err), "22003");

    // Right keys, and each of them made wrong in one place: (modality, point, key, right).
    type Case = (i16, [i64; 4], [i64; 3], bool);
    let mut cases: Vec<Case> = Vec::new();
    for (i, pair) in pts.chunks(2).take(1000).enumerate() {
        let m = Modality::ALL[i % Modality::ALL.len()];
        let p = Position::new(pair[0].0, pair[0].1, pair[1].0, pair[1].1);
        let k = HilbertKey::new(m, &p);
        let coords = [i64::from(p.x), i64::from(p.y), i64::from(p.z), i64::from(p.m)];
        let key = [k.h_xy as i64, k.h_yz as i64, k.h_zm as i64];
        let md = i16::from(m.as_u8());
        cases.push((md, coords, key, true));
        let wrong = match i % 4 {
            0 => [key[0] ^ 1, key[1], key[2]],
            1 => [key[0], key[1] ^ (1 << 30), key[2]],
            2 => [key[0], key[1], key[2] ^ (1 << 55)],
            _ => [key[0] ^ (1 << 56), key[1], key[2]],
        };
        cases.push((md, coords, wrong, false));
    }
    let col = |f: &dyn Fn(&Case) -> i64| cases.iter().map(f).collect::<Vec<i64>>();
    let ms: Vec<i16> = cases.iter().map(|c| c.0).collect();
    let (x, y, z, m) = (col(&|c| c.1[0]), col(&|c| c.1[1]), col(&|c| c.1[2]), col(&|c| c.1[3]));
    let (kx, ky, kz) = (col(&|c| c.2[0]), col(&|c| c.2[1]), col(&|c| c.2[2]));
    let rows = c
        .query(
            "SELECT hart_key_matches(kx, ky, kz, md, ST_MakePoint(x, y, z, m)),
                    hart_key_matches_plpgsql(kx, ky, kz, md, ST_MakePoint(x, y, z, m)),
                    hart_xy_of_point(md, ST_MakePoint(x, y, z, m)),
                    hart_xy_of_point_plpgsql(md, ST_MakePoint(x, y, z, m))
             FROM unnest($1::smallint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
                         $6::bigint[], $7::bigint[], $8::bigint[]) WITH ORDINALITY AS u(md, x, y, z, m, kx, ky, kz, i)
             ORDER BY i",
            &[&ms, &x, &y, &z, &m, &kx, &ky, &kz],
        )
        .await
        .unwrap();
    for (case, row) in cases.iter().zip(&rows) {
        assert_eq!((row.get::<_, bool>(0), row.get::<_, bool>(1)), (case.3, case.3), "{case:?}");
        let xy = (i64::from(case.0) << 56) | hilbert::encode(case.1[0] as u32, case.1[1] as u32) as i64;
        assert_eq!((row.get::<_, i64>(2), row.get::<_, i64>(3)), (xy, xy), "{case:?}");
    }

    // Not positions: both refuse alike (false for the check, NULL for h_xy).
    for point in [
        "ST_MakePoint(0.5, 1, 2, 3)",
        "ST_MakePoint(1, 2, 3.25, 3)",
        "ST_MakePoint(268435456, 1, 2, 3)",
        "ST_MakePoint(1, -1, 2, 3)",
        "ST_MakePoint(1, 2, 3)",
        "ST_MakePoint('NaN'::float8, 2, 3, 4)",
    ] {
        let row = c
            .query_one(
                &format!(
                    "SELECT hart_key_matches(0, 0, 0, 1::smallint, {point}),
                            hart_key_matches_plpgsql(0, 0, 0, 1::smallint, {point}),
                            hart_xy_of_point(1::smallint, {point}) IS NOT DISTINCT FROM
                                hart_xy_of_point_plpgsql(1::smallint, {point})"
                ),
                &[],
            )
            .await
            .unwrap();
        let got = (row.get::<_, bool>(0), row.get::<_, Option<bool>>(1), row.get::<_, bool>(2));
        assert_eq!(got, (false, Some(false), true), "{point}");
    }
}
