/*
 * hart_native: the Hilbert key of hart-core (crates/core/src/hilbert.rs, key.rs) in C.
 *
 * Optional. Migration 0014 makes hart_hilbert_encode, hart_key_matches and hart_xy_of_point
 * call these functions when this extension is installed in the database, and the PL/pgSQL
 * forms of migration 0002 otherwise; both give identical answers (crates/pg/tests/hilbert.rs
 * checks both against hart_core on random positions). The PL/pgSQL key check costs ~8 us per
 * inserted atom, a quarter of a bulk load's server time; this one ~0.1 us.
 *
 * The curve (normative: docs/FORMAT.md, hilbert.rs): 28-bit coordinates, 56-bit indices, a
 * four-state machine whose state says whether x and y are swapped (bit 0) and complemented
 * (bit 1) for the remaining low bits, walked one bit of each coordinate per level.
 */
#include "postgres.h"

#include <math.h>

#include "fmgr.h"

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
