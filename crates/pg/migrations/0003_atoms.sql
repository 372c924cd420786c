-- 0003: atoms, partitioned by range of h_xy into 256 partitions, with their indexes.
--
-- An atom is identified by its Hilbert key (h_xy, h_yz, h_zm), derived from its modality and
-- position; the position is derived from its content (DESIGN.md sections 2-4). Composites keep
-- no list of children: the LINESTRING ZM of `geom` runs through the children's positions, and
-- position -> key -> primary key finds each child. A leaf has `value` (at most 64 bytes) and a
-- geometry holding only its POINT ZM; a composite has value NULL and POINT ZM + LINESTRING ZM.
--
-- Partition plan (docs/decisions/0010-pg-partition-plan.md): h_xy's high byte is the modality
-- and its low 56 bits the Hilbert index of (x, y), whose high bits are content features, so
-- atoms are far from uniform over the index. Each of the 7 modalities gets 32 ranges cut at
-- the quantiles of a measured corpus (examples/partition_plan.rs), 224 partitions; modality
-- bytes 7..37 (not assigned yet) get one partition each (31); everything above, one (1).
-- 256 in all. The plan is kept in atom_partition_plan for inspection and future re-planning.
SET LOCAL ROLE hart_owner;

CREATE TABLE atom_partition_plan (
    partition_name text     PRIMARY KEY,
    modality       smallint,           -- NULL: the range of several unassigned modality bytes
    lo             bigint   NOT NULL,  -- inclusive
    hi             bigint,             -- exclusive; NULL = no upper bound
    UNIQUE (lo)
);
COMMENT ON TABLE atom_partition_plan IS
    'The h_xy range of each atoms partition (migration 0003; docs/decisions/0010-pg-partition-plan.md).';

CREATE TABLE atoms (
    h_xy         bigint      NOT NULL,
    h_yz         bigint      NOT NULL,
    h_zm         bigint      NOT NULL,
    geom         geometry(GeometryCollectionZM, 0) NOT NULL,
    -- The atom's own point, for k-NN and region queries without reading the whole geometry.
    pt           geometry(PointZM, 0) NOT NULL GENERATED ALWAYS AS (ST_GeometryN(geom, 1)) STORED,
    value        bytea,
    modality     smallint    NOT NULL,
    content_hash bytea       NOT NULL,
    ref_count    bigint      NOT NULL DEFAULT 0,
    meta         jsonb,
    -- Access (docs/SECURITY.md): readable by everyone when public, else by its holders, the
    -- roles that wrote this exact content.
    is_public    boolean     NOT NULL DEFAULT false,
    owners       name[]      NOT NULL DEFAULT ARRAY[current_user]::name[],
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   name        NOT NULL DEFAULT current_user,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    updated_by   name        NOT NULL DEFAULT current_user,
    version      integer     NOT NULL DEFAULT 1,
    CONSTRAINT atoms_pkey PRIMARY KEY (h_xy, h_yz, h_zm),
    CONSTRAINT atoms_modality_in_key CHECK (modality BETWEEN 0 AND 127 AND (h_xy >> 56) = modality),
    CONSTRAINT atoms_value_size CHECK (octet_length(value) <= 64),
    CONSTRAINT atoms_content_hash_size CHECK (octet_length(content_hash) = 32),
    CONSTRAINT atoms_ref_count_nonnegative CHECK (ref_count >= 0),
    CONSTRAINT atoms_meta_is_object CHECK (meta IS NULL OR jsonb_typeof(meta) = 'object'),
    CONSTRAINT atoms_has_owner CHECK (cardinality(owners) >= 1),
    CONSTRAINT atoms_version_positive CHECK (version >= 1)
) PARTITION BY RANGE (h_xy);

COMMENT ON TABLE atoms IS
    'Content-addressed atoms (DESIGN.md section 2); key = Hilbert key of (modality, position).';
COMMENT ON COLUMN atoms.geom IS
    'GEOMETRYCOLLECTION ZM: own POINT ZM, then for a composite a LINESTRING ZM through its children, in order.';
COMMENT ON COLUMN atoms.pt IS 'The atom''s own point (first member of geom), indexed for k-NN.';
COMMENT ON COLUMN atoms.owners IS 'Roles holding this content privately (docs/SECURITY.md).';

DO $plan$
DECLARE
    names   text[] := ARRAY['binary', 'text', 'code', 'image', 'audio', 'video', 'model'];
    -- Inner boundaries (offsets in the 56-bit Hilbert index) of each modality's 32 ranges:
    -- quantiles of the corpus measured by examples/partition_plan.rs. Image, audio, video
    -- and model have no decoders yet: they are chunked and featured as binary, so they use
    -- the binary plan until their decoders exist (then re-plan with a new migration).
    q_binary bigint[] := ARRAY[
        587020089950208, 773416287207424, 942076128657408, 2182028261851136,
        2275548216688640, 2484790838165504, 2780771696771072, 3211673488850944,
        9085541101338624, 9215273414426624, 9509644291538944, 9607588257726464,
        9694855691239424, 9753937717493760, 9814808233771008, 9957421123371008,
        11121075369803776, 11247121190617088, 11312541094379520, 11458014260232192,
        11564207775416320, 11809656150163456, 12047010745024512, 12427967984566272,
        12756534051209216, 13432493102333952, 15127480211865600, 15482973313826816,
        34885206265561088, 36035541940043776, 51307244251250688];
    q_text bigint[] := ARRAY[
        344592854548480, 6230283472863232, 6343316708786176, 6404888895422464,
        6857914437337088, 6992344715886592, 7093858240299008, 7117694981636096,
        7168786339725312, 7179809354416128, 7199860809793536, 7242139343781888,
        7266692628480000, 7347804262367232, 7393715459981312, 7452767494864896,
        7554416657825792, 7753392703143936, 8159235082813440, 10636184026873856,
        16156965998690304, 16325223583318016, 16486706012225536, 16647689664987136,
        18034358734553088, 18627610768572416, 22644488363048960, 23443305420292096,
        61489443627859968, 64654680648581120, 64914723593781248];
    q_code bigint[] := ARRAY[
        278514958860288, 1031269880168448, 1626093760020480, 10935969035321344,
        12745539064954880, 15942905271156736, 16274517046329344, 16409927827324928,
        16626533397430272, 16767921268195328, 17511183678439424, 18127623759593472,
        18944334606893056, 22110468844814336, 22737887567020032, 23449540053958656,
        24058341187649536, 37174928927096832, 44343219798933504, 48294666559291392,
        49595301396217856, 54309536152944640, 55356273280942080, 59259364673847296,
        59259365833572352, 59259366962888704, 59259368079622144, 59266521396936704,
        59433731612475392, 62237015721115648, 66667703124885504];
    q bigint[];
    mb int; i int; lo bigint; hi bigint; part text;
BEGIN
    FOR mb IN 0..6 LOOP
        q := CASE mb WHEN 1 THEN q_text WHEN 2 THEN q_code ELSE q_binary END;
        FOR i IN 0..31 LOOP
            lo := (mb::bigint << 56) + CASE WHEN i = 0 THEN 0 ELSE q[i] END;
            hi := (mb::bigint << 56) + CASE WHEN i = 31 THEN 1::bigint << 56 ELSE q[i + 1] END;
            part := format('atoms_%s_%s', names[mb + 1], lpad(i::text, 2, '0'));
            INSERT INTO atom_partition_plan VALUES (part, mb, lo, hi);
        END LOOP;
    END LOOP;
    FOR mb IN 7..37 LOOP
        INSERT INTO atom_partition_plan
        VALUES (format('atoms_m%s', lpad(mb::text, 3, '0')), mb, mb::bigint << 56, (mb + 1)::bigint << 56);
    END LOOP;
    INSERT INTO atom_partition_plan VALUES ('atoms_m038_up', NULL, 38::bigint << 56, NULL);

    FOR part, lo, hi IN SELECT p.partition_name, p.lo, p.hi FROM atom_partition_plan p ORDER BY p.lo LOOP
        -- fillfactor 90: room on each page for HOT updates of ref_count and meta.
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF atoms FOR VALUES FROM (%s) TO (%s) WITH (fillfactor = 90)',
            part, lo, coalesce(hi::text, 'MAXVALUE'));
    END LOOP;
END
$plan$;

-- Indexes on the partitioned table are created on every partition.
-- Whole geometry, 4-D (x, y, z, m): "which composites pass near this point" (parents query).
CREATE INDEX atoms_geom_gist ON atoms USING gist (geom gist_geometry_ops_nd);
-- Own point, 4-D: exact k-NN with ORDER BY pt <<->> $point, and region queries.
CREATE INDEX atoms_pt_gist ON atoms USING gist (pt gist_geometry_ops_nd);
CREATE INDEX atoms_content_hash ON atoms (content_hash);
CREATE INDEX atoms_modality ON atoms (modality);
CREATE INDEX atoms_created_at ON atoms (created_at DESC);

-- Audit: version, updated_at and updated_by follow every change of metadata or access.
CREATE FUNCTION atoms_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version    := OLD.version + 1;
    NEW.updated_at := now();
    NEW.updated_by := current_user;
    RETURN NEW;
END
$$;
CREATE TRIGGER atoms_touch BEFORE UPDATE ON atoms FOR EACH ROW
    WHEN (OLD.meta IS DISTINCT FROM NEW.meta
          OR OLD.is_public IS DISTINCT FROM NEW.is_public
          OR OLD.owners IS DISTINCT FROM NEW.owners)
    EXECUTE FUNCTION atoms_touch();

-- Publishing cannot be undone: what was public may have been read and relied upon (other
-- roles' objects may reference it without holding it, docs/SECURITY.md).
CREATE FUNCTION atoms_publish_is_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a public atom cannot be made private again'
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;
CREATE TRIGGER atoms_publish_is_final BEFORE UPDATE ON atoms FOR EACH ROW
    WHEN (OLD.is_public AND NOT NEW.is_public)
    EXECUTE FUNCTION atoms_publish_is_final();

-- Checks of a new atom's structure. They are a trigger on INSERT, not CHECK constraints,
-- because PostgreSQL re-evaluates every CHECK on every UPDATE, and atoms are updated all the
-- time (ref_count): the key check alone would add ~15 us to each reference. The content they
-- check cannot change afterwards (atoms_content_is_immutable).
--   atoms_key_matches_point: the key is the key of the atom's own point; a wrong key would
--     hide the atom from its parents (three Hilbert encodings, ~7 us).
--   atoms_shape: a leaf has a value and a POINT only; a composite has no value, and a POINT
--     then a LINESTRING of at least 2 vertices.
CREATE FUNCTION atoms_validate() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    own geometry := ST_GeometryN(NEW.geom, 1);
    n   int := ST_NumGeometries(NEW.geom);
BEGIN
    IF own IS NULL OR GeometryType(own) <> 'POINT'
       OR NOT hart_key_matches(NEW.h_xy, NEW.h_yz, NEW.h_zm, NEW.modality, own) THEN
        RAISE EXCEPTION 'new row for relation "atoms" violates check constraint "atoms_key_matches_point"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'atoms_key_matches_point', TABLE = 'atoms',
                  DETAIL = format('key (%s, %s, %s), modality %s, point %s', NEW.h_xy, NEW.h_yz,
                                  NEW.h_zm, NEW.modality, ST_AsText(own)),
                  HINT = 'the key must be hart_key(modality, x, y, z, m) of the atom''s own point';
    END IF;
    IF NOT (CASE WHEN NEW.value IS NOT NULL THEN n = 1
                 ELSE n = 2 AND GeometryType(ST_GeometryN(NEW.geom, 2)) = 'LINESTRING'
                      AND ST_NPoints(ST_GeometryN(NEW.geom, 2)) >= 2
            END) THEN
        RAISE EXCEPTION 'new row for relation "atoms" violates check constraint "atoms_shape"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'atoms_shape', TABLE = 'atoms',
                  DETAIL = 'a leaf has a value and a POINT ZM; a composite has no value, a POINT ZM and a LINESTRING ZM of at least 2 vertices';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER atoms_validate BEFORE INSERT ON atoms FOR EACH ROW
    EXECUTE FUNCTION atoms_validate();

-- Content is immutable: an atom's identity never changes once written. A column trigger, so
-- that updates of meta or ref_count do not pay for it.
CREATE FUNCTION atoms_content_is_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'atom content is immutable: key, geometry, modality, content_hash and value cannot change'
        USING ERRCODE = 'integrity_constraint_violation',
              HINT = 'write a new atom instead; only meta, is_public and ref_count change';
END
$$;
CREATE TRIGGER atoms_content_is_immutable
    BEFORE UPDATE OF h_xy, h_yz, h_zm, geom, modality, content_hash, value ON atoms FOR EACH ROW
    WHEN (OLD.h_xy <> NEW.h_xy OR OLD.h_yz <> NEW.h_yz OR OLD.h_zm <> NEW.h_zm
          OR OLD.modality <> NEW.modality OR OLD.content_hash <> NEW.content_hash
          OR OLD.value IS DISTINCT FROM NEW.value
          OR ST_AsEWKB(OLD.geom) <> ST_AsEWKB(NEW.geom))
    EXECUTE FUNCTION atoms_content_is_immutable();
