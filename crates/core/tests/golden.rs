//! Golden vectors: the hashes, positions, Hilbert keys and geometry bytes of fixed inputs.
//!
//! These lock format version 1 (`hart_core::FORMAT_VERSION`). Every value below is derived
//! from content alone and must be identical on every machine, backend and run. CHANGING ANY
//! OF THEM IS A FORMAT CHANGE: it breaks every stored atom's identity or key. Do it only
//! together with a `FORMAT_VERSION` bump and an entry in the version log of docs/FORMAT.md,
//! then refresh with `UPDATE_EXPECT=1 cargo test -p hart-core --test golden`.

use std::fmt::Write as _;

use expect_test::expect;
use hart_core::atom::{leaf_hash, node_hash};
use hart_core::features::leaf_identity;
use hart_core::tree::{make_node, Child};
use hart_core::{geom, hilbert, HilbertKey, Modality, Position, FORMAT_VERSION};

/// Fixed leaf inputs: every modality, the empty value, one byte, text tokens, and a full
/// 64-byte value.
fn leaves() -> Vec<(Modality, Vec<u8>)> {
    let full: Vec<u8> = (0u8..64).collect();
    vec![
        (Modality::Binary, vec![]),
        (Modality::Binary, vec![0x00]),
        (Modality::Binary, vec![0xff]),
        (Modality::Binary, full.clone()),
        (Modality::Text, vec![]),
        (Modality::Text, b"hello".to_vec()),
        (Modality::Text, b" ".to_vec()),
        (Modality::Text, b"42".to_vec()),
        (Modality::Code, b"fn".to_vec()),
        (Modality::Image, vec![0x80; 64]),
        (Modality::Audio, vec![0x01, 0x00, 0xff, 0x7f]),
        (Modality::Video, b"frame".to_vec()),
        (Modality::Model, full),
    ]
}

fn show(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(s) if value.len() <= 16 => format!("{s:?}"),
        _ => format!("0x{}", hex::encode(value)),
    }
}

fn pos(p: &Position) -> String {
    format!("({}, {}, {}, {})", p.x, p.y, p.z, p.m)
}

#[test]
fn format_version() {
    expect!["1"].assert_eq(&FORMAT_VERSION.to_string());
}

#[test]
fn leaf_hashes() {
    let mut out = String::new();
    for (m, v) in leaves() {
        writeln!(out, "{m} {}\n  {}", show(&v), leaf_hash(m, &v)).unwrap();
    }
    expect![[r#"
        binary ""
          1ad48f49627079d806b802c74f40c39d55fe1d78b3faf0f8017aec62cec42122
        binary "\0"
          91525ff00a3755a8df93c626b59f6e36cf021d85ebccecdedc38f3f1890a15fc
        binary 0xff
          182877f502a256c95bd6b483d0a1ea54849592774447069e3db5e62c895ec404
        binary 0x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f
          8a33ffac0ac7354f65250ec8d7ab88c55ecd1c46601226812911d0e3e4346d27
        text ""
          7b7015bb92cf0b318037702a6cdd81dee41224f734684c2c122cd6359cb1ee63
        text "hello"
          4cd53554997d91ea2943bc2af811418846641fbb3c1cf917bf9771e206923670
        text " "
          00fb0accec8f7b16aa5d7ed64c7d08f565bb99c148a77a4d1ff552cff599ce7b
        text "42"
          f40e9ec37b37ed08050e4aa05e47a84799bb1dbac8fcb662600d6b252bace6f7
        code "fn"
          e2ee076afe42207481a46e430aa72b6effdb379de89f20e74187ffe8fc051dc7
        image 0x80808080808080808080808080808080808080808080808080808080808080808080808080808080808080808080808080808080808080808080808080808080
          b939ace66efc6acb48baa6f708788577fe7cb1dcca1e4de3b91bb0d7be39f966
        audio 0x0100ff7f
          c30d88baffd42aef41ec84031a00a381b5ac371c79c17d388908ce6122d7d91b
        video "frame"
          7600af34aea85a5b3fb61ea73a2d5431c81f56822ff1fe4606b3b080ad566880
        model 0x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f
          e3910eb9f80249a8562a57ba088ab78f3626e2fa90e80024359a04c03ae414cf
    "#]]
    .assert_eq(&out);
}

#[test]
fn node_hashes() {
    let a = leaf_hash(Modality::Text, b"hello");
    let b = leaf_hash(Modality::Text, b" ");
    let c = leaf_hash(Modality::Text, b"world");
    let mut out = String::new();
    let cases: [(&str, Modality, Vec<_>); 5] = [
        ("text []", Modality::Text, vec![]),
        ("text [hello, ' ', world]", Modality::Text, vec![a, b, c]),
        ("text [world, ' ', hello]", Modality::Text, vec![c, b, a]),
        ("text [hello, hello]", Modality::Text, vec![a, a]),
        ("binary [hello, hello]", Modality::Binary, vec![a, a]),
    ];
    for (name, m, kids) in cases {
        writeln!(out, "{name}\n  {}", node_hash(m, &kids)).unwrap();
    }
    expect![[r#"
        text []
          2022ec9d571ba774cf9e83d0194962f5d1e3aa1a48d486a67e2762a6c7959015
        text [hello, ' ', world]
          0124bbc53d411e8048ca67d2ed6b2ed91c47d284036b174ea575555be4bd4801
        text [world, ' ', hello]
          0d609c68f29fe8e69394257dbe931bea21be0b3a041d10c256cb0637318c3365
        text [hello, hello]
          eaf0584967da55f34e365b8c4c6586fd8f8a08395d27e6add6c69f692fca86c8
        binary [hello, hello]
          46634be4c8a930aa9f7a07bba2b0adb16b52f054d21514933cb7abaa3ae88f26
    "#]]
    .assert_eq(&out);
}

#[test]
fn leaf_positions_and_keys() {
    let mut out = String::new();
    for (m, v) in leaves() {
        let (_, p) = leaf_identity(m, &v);
        let k = HilbertKey::new(m, &p);
        writeln!(out, "{m} {}\n  pos {}\n  key {k}", show(&v), pos(&p)).unwrap();
        assert_eq!(k.decode(), Some((m, p)));
    }
    expect![[r#"
        binary ""
          pos (54298, 18831, 28770, 55417)
          key 3385934651:792820987:1824533453
        binary "\0"
          pos (21137, 61535, 14090, 4171861)
          key 1712247548:4198471995:5863869100509
        binary 0xff
          pos (267397144, 268432759, 267428354, 4180310)
          key 48038029597185151:48038761214066619:72051364698340120
        binary 0x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f
          pos (33502090, 100642047, 50954, 268390197)
          key 15762600339248443:5629496125248827:24019199985323895
        text ""
          pos (201355387, 47893, 53138, 12555)
          key 139611590334200950:2677686813:4126960073
        text "hello"
          pos (8508748, 80041013, 12615065, 7334545)
          key 88412384041574241:4679775634056306:224667241382466
        text " "
          pos (173079296, 117770, 36844, 5755)
          key 138550572698544742:6722420252:3924552117
        text "42"
          pos (100077300, 67290014, 14203, 2285)
          key 82190398372681414:4503620920835089:259998620
        code "fn"
          pos (6549218, 134375943, 17150, 29728)
          key 162195597694228155:66052801046271339:790557014
        image 0x80808080808080808080808080808080808080808080808080808080808080808080808080808080808080808080808080808080808080808080808080808080
          pos (135215545, 33547948, 134806638, 4180842)
          key 281849911542882587:19139289120405668:66046837330487448
        audio 0x0100ff7f
          pos (99618243, 134199944, 1103103, 16772906)
          key 300615641895637221:6005900617596863:94925879202737
        video "frame"
          pos (109117558, 134165679, 107456686, 20929370)
          key 372414847657235305:11656381849018881:6633630527249682
        model 0x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f
          pos (33526243, 100645134, 760, 268413001)
          key 448108163710385401:5629498549032214:24019197903171457
    "#]]
    .assert_eq(&out);
}

#[test]
fn hilbert_indices() {
    let max = (1u32 << 28) - 1;
    let mut out = String::new();
    for (x, y) in [
        (0, 0),
        (1, 0),
        (1, 1),
        (0, 1),
        (0, 2),
        (max, 0),
        (0, max),
        (max, max),
        (1 << 27, 1 << 27),
        (123_456_789, 98_765_432),
        (0x0abc_def0, 0x0123_4567),
    ] {
        writeln!(out, "({x}, {y}) -> {}", hilbert::encode(x, y)).unwrap();
    }
    let p = Position::new(0x0abc_def0, 0x0123_4567, 0x0fed_cba9, 0x0765_4321);
    for m in [Modality::Binary, Modality::Model] {
        let k = HilbertKey::new(m, &p);
        writeln!(out, "{m} {} -> {k} = {}", pos(&p), hex::encode(k.to_bytes())).unwrap();
    }
    expect![[r#"
        (0, 0) -> 0
        (1, 0) -> 1
        (1, 1) -> 2
        (0, 1) -> 3
        (0, 2) -> 4
        (268435455, 0) -> 72057594037927935
        (0, 268435455) -> 24019198012642645
        (268435455, 268435455) -> 48038396025285290
        (134217728, 134217728) -> 36028797018963968
        (123456789, 98765432) -> 10915818197816955
        (180150000, 19088743) -> 66957368889927957
        binary (180150000, 19088743, 267242409, 124076833) -> 66957368889927957:24304664979075798:54116073788295234 = 00ede15f4bc76915005658f6ca7672d600c042484aca4842
        model (180150000, 19088743, 267242409, 124076833) -> 499302933117495573:24304664979075798:54116073788295234 = 06ede15f4bc76915005658f6ca7672d600c042484aca4842
    "#]]
    .assert_eq(&out);
}

/// A leaf and a composite of three text tokens (one repeated), with the composite's hash and
/// position made by the tree builder's own `make_node`.
fn sample_atoms() -> (Position, Position, Vec<Position>) {
    let child = |v: &[u8]| {
        let (hash, pos) = leaf_identity(Modality::Text, v);
        Child { hash, pos }
    };
    let kids = [child(b"hello"), child(b" "), child(b"hello")];
    let node = make_node(Modality::Text, &kids, &mut |_| {});
    (kids[0].pos, node.pos, kids.iter().map(|c| c.pos).collect())
}

#[test]
fn geometry_of_a_leaf() {
    let (leaf, _, _) = sample_atoms();
    let out =
        format!("{}\n{}\n{}\n", geom::wkt(&leaf, &[]), hex::encode(geom::ewkb(&leaf, &[])), geom::geojson(&leaf, &[]));
    expect![[r#"
        GEOMETRYCOLLECTION ZM (POINT ZM (8508748 80041013 12615065 7334545))
        01070000c00100000001010000c000000080a93a6041000000d45015934100000020b30f684100000040a4fa5b41
        {"type":"GeometryCollection","geometries":[{"type":"Point","coordinates":[8508748,80041013,12615065,7334545]}]}
    "#]]
    .assert_eq(&out);
}

#[test]
fn geometry_of_a_composite() {
    let (_, node, kids) = sample_atoms();
    let out = format!(
        "{}\n{}\n{}\n",
        geom::wkt(&node, &kids),
        hex::encode(geom::ewkb(&node, &kids)),
        geom::geojson(&node, &kids)
    );
    expect![[r#"
        GEOMETRYCOLLECTION ZM (POINT ZM (63346195 53386195 8413424 4910192),LINESTRING ZM (8508748 80041013 12615065 7334545,173079296 117770 36844 5755,8508748 80041013 12615065 7334545))
        01070000c00200000001010000c000000098b0348e4100000098de748941000000001e0c6041000000001cbb524101020000c00300000000000080a93a6041000000d45015934100000020b30f684100000040a4fa5b4100000000f6a1a44100000000a0c0fc400000000080fde14000000000007bb64000000080a93a6041000000d45015934100000020b30f684100000040a4fa5b41
        {"type":"GeometryCollection","geometries":[{"type":"Point","coordinates":[63346195,53386195,8413424,4910192]},{"type":"LineString","coordinates":[[8508748,80041013,12615065,7334545],[173079296,117770,36844,5755],[8508748,80041013,12615065,7334545]]}]}
    "#]]
    .assert_eq(&out);
    assert_eq!(geom::decode_ewkb(&geom::ewkb(&node, &kids)), Ok((node, kids)));
}
