/*
 * hart_native: the Hilbert key of hart-core (crates/core/src/hilbert.rs, key.rs) in C.
 *
 * Optional. Migration 0014 makes hart_hilbert_encode, hart_key_matches and hart_xy_of_point
 * call these functions when this extension is installed in the database, and the PL/pgSQL
 * forms of migration 0002 otherwise; both give identical answers (crates/pg/tests/hilbert.rs
 * checks both against hart_core on random positions). The PL/pgSQL key check costs ~8 us per
 * inserted atom, a quarter of a bulk load's server time; this one ~0.1 us. Migration 0015's
 * merge finds a composite's children with hart_native_line_keys when it is installed.
 *
 * The curve (normative: docs/FORMAT.md, hilbert.rs): 28-bit coordinates, 56-bit indices, a
 * four-state machine whose state says whether x and y are swapped (bit 0) and complemented
 * (bit 1) for the remaining low bits, walked one bit of each coordinate per level.
 */
#include "postgres.h"

#include <math.h>

#include "fmgr.h"
#include "funcapi.h"
#include "utils/tuplestore.h"

PG_MODULE_MAGIC;

#define HART_ORDER 28
#define HART_COORD_MAX ((int64) ((INT64CONST(1) << HART_ORDER) - 1))
#define HART_SWAP 1u
#define HART_FLIP 2u

/* Hilbert index of (x, y), both in 0 .. 2^28 - 1. */
static uint64
hilbert_encode(uint32 x, uint32 y)
{
	unsigned	state = 0;
	uint64		d = 0;
	int			level;

	for (level = HART_ORDER - 1; level >= 0; level--)
	{
		unsigned	rx = (x >> level) & 1u;
		unsigned	ry = (y >> level) & 1u;

		if (state & HART_FLIP)
		{
			rx ^= 1u;
			ry ^= 1u;
		}
		if (state & HART_SWAP)
		{
			unsigned	t = rx;

			rx = ry;
			ry = t;
		}
		d = (d << 2) | ((3u * rx) ^ ry);
		/* Quadrants with ry == 0 are transposed; the one with rx == 1 also complemented. */
		if (ry == 0)
			state ^= HART_SWAP | (rx ? HART_FLIP : 0u);
	}
	return d;
}

/* A coordinate of a point, if it is a whole number in 0 .. 2^28 - 1 (NaN is not). */
static bool
coord_of(float8 v, uint32 *out)
{
	if (!(v >= 0.0 && v <= (float8) HART_COORD_MAX) || v != floor(v))
		return false;
	*out = (uint32) v;
	return true;
}

PG_FUNCTION_INFO_V1(hart_native_hilbert_encode);

/* hart_native_hilbert_encode(x bigint, y bigint) RETURNS bigint; STRICT. */
Datum
hart_native_hilbert_encode(PG_FUNCTION_ARGS)
{
	int64		x = PG_GETARG_INT64(0);
	int64		y = PG_GETARG_INT64(1);

	if (x < 0 || x > HART_COORD_MAX || y < 0 || y > HART_COORD_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("hart_hilbert_encode: coordinate out of range 0..2^28-1: (" INT64_FORMAT ", " INT64_FORMAT ")",
						x, y)));
	PG_RETURN_INT64((int64) hilbert_encode((uint32) x, (uint32) y));
}

PG_FUNCTION_INFO_V1(hart_native_key_matches);

/*
 * hart_native_key_matches(h_xy, h_yz, h_zm bigint, modality smallint, x, y, z, m float8)
 * RETURNS boolean: true when the key is the key of `modality` at (x, y, z, m). Not STRICT:
 * a NULL anywhere (a point without Z or M) is false, never NULL, so that a check built on it
 * cannot be passed by NULL, and so that SQL wrappers calling it can be inlined.
 */
Datum
hart_native_key_matches(PG_FUNCTION_ARGS)
{
	uint32		c[4];
	int			i;
	int64		h_xy, h_yz, h_zm;
	int16		modality;

	for (i = 0; i < 8; i++)
		if (PG_ARGISNULL(i))
			PG_RETURN_BOOL(false);
	h_xy = PG_GETARG_INT64(0);
	h_yz = PG_GETARG_INT64(1);
	h_zm = PG_GETARG_INT64(2);
	modality = PG_GETARG_INT16(3);
	for (i = 0; i < 4; i++)
		if (!coord_of(PG_GETARG_FLOAT8(4 + i), &c[i]))
			PG_RETURN_BOOL(false);
	PG_RETURN_BOOL(h_xy == (int64) (((uint64) (uint16) modality << 56) | hilbert_encode(c[0], c[1]))
				   && h_yz == (int64) hilbert_encode(c[1], c[2])
				   && h_zm == (int64) hilbert_encode(c[2], c[3]));
}

PG_FUNCTION_INFO_V1(hart_native_xy_of_point);

/*
 * hart_native_xy_of_point(modality smallint, x float8, y float8) RETURNS bigint; STRICT:
 * h_xy of a point, NULL when x or y is not a whole number in 0 .. 2^28 - 1.
 */
Datum
hart_native_xy_of_point(PG_FUNCTION_ARGS)
{
	int16		modality = PG_GETARG_INT16(0);
	uint32		x, y;

	if (!coord_of(PG_GETARG_FLOAT8(1), &x) || !coord_of(PG_GETARG_FLOAT8(2), &y))
		PG_RETURN_NULL();
	PG_RETURN_INT64((int64) (((uint64) (uint16) modality << 56) | hilbert_encode(x, y)));
}

/* Keys of a composite's children: one (h_xy, h_yz, h_zm) per vertex. */
typedef struct LineKey
{
	int64		k[3];
} LineKey;

static int
line_key_cmp(const void *a, const void *b)
{
	const LineKey *x = (const LineKey *) a;
	const LineKey *y = (const LineKey *) b;
	int			i;

	for (i = 0; i < 3; i++)
		if (x->k[i] != y->k[i])
			return x->k[i] < y->k[i] ? -1 : 1;
	return 0;
}

static uint32
wkb_uint32(const unsigned char *p, bool little)
{
	return little
		? (uint32) p[0] | (uint32) p[1] << 8 | (uint32) p[2] << 16 | (uint32) p[3] << 24
		: (uint32) p[3] | (uint32) p[2] << 8 | (uint32) p[1] << 16 | (uint32) p[0] << 24;
}

static float8
wkb_float8(const unsigned char *p, bool little)
{
	uint64		u = 0;
	float8		v;
	int			i;

	for (i = 0; i < 8; i++)
		u |= (uint64) p[little ? i : 7 - i] << (8 * i);
	memcpy(&v, &u, sizeof(v));
	return v;
}

PG_FUNCTION_INFO_V1(hart_native_line_keys);

/*
 * hart_native_line_keys(modality smallint, line bytea) RETURNS TABLE (h_xy, h_yz, h_zm bigint);
 * STRICT. `line` is the ISO WKB of a composite's LINESTRING ZM (ST_AsBinary); the rows are
 * the distinct keys of its vertices (a child listed twice is one row), in key order. A vertex
 * that is not a position (coordinates not whole numbers in 0 .. 2^28 - 1) is an error: no
 * atom can sit there, so the composite cannot be stored.
 */
Datum
hart_native_line_keys(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int16		modality = PG_GETARG_INT16(0);
	bytea	   *wkb = PG_GETARG_BYTEA_PP(1);
	const unsigned char *p = (const unsigned char *) VARDATA_ANY(wkb);
	Size		len = VARSIZE_ANY_EXHDR(wkb);
	bool		little;
	uint32		type, n, i, kept;
	LineKey    *keys;

	if (len < 9 || (p[0] != 0 && p[0] != 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("hart_native_line_keys: not WKB (%zu bytes)", len)));
	little = p[0] == 1;
	type = wkb_uint32(p + 1, little);
	if (type != 3002)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("hart_native_line_keys: WKB type %u is not a LINESTRING ZM (3002)", type)));
	n = wkb_uint32(p + 5, little);
	if (len != 9 + (Size) n * 32)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("hart_native_line_keys: a LINESTRING ZM of %u points is %zu bytes of WKB, not %zu",
						n, (Size) 9 + (Size) n * 32, len)));

	InitMaterializedSRF(fcinfo, 0);
	keys = (LineKey *) palloc(sizeof(LineKey) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		uint32		c[4];
		int			j;

		for (j = 0; j < 4; j++)
			if (!coord_of(wkb_float8(p + 9 + (Size) i * 32 + (Size) j * 8, little), &c[j]))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("vertex %u of a composite's line is not a position", i + 1),
						 errhint("each vertex is a child's own point: whole numbers in 0..2^28-1")));
		keys[i].k[0] = (int64) (((uint64) (uint16) modality << 56) | hilbert_encode(c[0], c[1]));
		keys[i].k[1] = (int64) hilbert_encode(c[1], c[2]);
		keys[i].k[2] = (int64) hilbert_encode(c[2], c[3]);
	}
	if (n > 1)
		qsort(keys, n, sizeof(LineKey), line_key_cmp);
	for (i = 0, kept = 0; i < n; i++)
	{
		Datum		values[3];
		bool		nulls[3] = {false, false, false};

		if (kept > 0 && line_key_cmp(&keys[i], &keys[i - 1]) == 0)
			continue;
		kept++;
		values[0] = Int64GetDatum(keys[i].k[0]);
		values[1] = Int64GetDatum(keys[i].k[1]);
		values[2] = Int64GetDatum(keys[i].k[2]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	pfree(keys);
	return (Datum) 0;
}
