/*-------------------------------------------------------------------------
 *
 * jsonbuild.c
 *		Conversion layer: JSON text to jsonb, interruptibly.
 *
 * jsonb_in never checks for interrupts, and its key sort (one qsort per
 * object) cannot be stopped either, so a cancel that arrives while it
 * parses tens of MB waits for the whole parse.  This builds the same value
 * with PostgreSQL's own JSON parser (pg_parse_json, the one jsonb_in uses)
 * and semantic actions of our own: the tree of JsonbValues is filled as
 * the tokens come, every object's keys are sorted by a merge sort that
 * checks for interrupts, and the tree is written out in jsonb's on-disk
 * format (utils/jsonb.h) by a writer that checks too.  JsonbValueToJsonb()
 * would write the same bytes without checking: on answers of millions of
 * small containers that took a quarter of the time, too long for a cancel
 * to wait.  The tree lives in a context of its own, deleted once written.
 * The value equals jsonb_in's, byte for byte: the same lexer, numeric_in
 * for numbers, jsonb's key order, and the last of duplicate keys kept.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/jsonapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/memutils.h"
#include "utils/fmgroids.h"
#include "utils/jsonb.h"

#include "jsonbuild.h"

#if PG_VERSION_NUM >= 160000
typedef JsonParseErrorType SemResult;
#define SEM_DONE return JSON_SUCCESS
#else
typedef void SemResult;
#define SEM_DONE return
#endif

/* jsonb's own limits: a container's count must fit its header. */
#define AE_JSONB_MAX_COUNT ((size_t) JB_CMASK)

/* Interrupts are checked once per this many tokens or sorted keys. */
#define CHECK_EVERY 4096

typedef struct Level
{
	JsonbValue	value;			/* the jbvObject or jbvArray being filled */
	int			cap;
	JsonbValue	key;			/* an object's pending key */
} Level;

typedef struct BuildState
{
	Level	   *levels;
	int			depth;
	int			cap;
	JsonbValue	root;
	uint32		ticks;
	FmgrInfo	numeric_in;
} BuildState;

static inline void
tick(BuildState *st)
{
	if ((++st->ticks % CHECK_EVERY) == 0)
		CHECK_FOR_INTERRUPTS();
}

/* jsonb's key order: shorter first, then bytewise; of equal keys the last written first. */
static int
pair_cmp(const JsonbPair *a, const JsonbPair *b)
{
	if (a->key.val.string.len != b->key.val.string.len)
		return a->key.val.string.len > b->key.val.string.len ? 1 : -1;
	if (a->key.val.string.len > 0)
	{
		int			r = memcmp(a->key.val.string.val, b->key.val.string.val,
							   a->key.val.string.len);

		if (r != 0)
			return r;
	}
	return a->order == b->order ? 0 : (a->order > b->order ? -1 : 1);
}

static bool
same_key(const JsonbPair *a, const JsonbPair *b)
{
	return a->key.val.string.len == b->key.val.string.len &&
		memcmp(a->key.val.string.val, b->key.val.string.val, a->key.val.string.len) == 0;
}

/*
 * Sorts an object's pairs into jsonb's order and keeps the last of each
 * duplicate key.  A bottom-up merge sort of pointers, so that it can check
 * for interrupts; the pairs are moved once, at the end.
 */
static void
finish_object(BuildState *st, JsonbValue *obj)
{
	int			n = obj->val.object.nPairs;
	JsonbPair  *pairs = obj->val.object.pairs;
	JsonbPair **a;
	JsonbPair **b;
	JsonbPair  *out;
	int			width;
	int			i;
	int			m;

	if (n < 2)
		return;
	/* Keys often come in order already: then there is nothing to move. */
	for (i = 1; i < n; i++)
	{
		if (pair_cmp(&pairs[i - 1], &pairs[i]) >= 0 || same_key(&pairs[i - 1], &pairs[i]))
			break;
		tick(st);
	}
	if (i == n)
		return;
	a = palloc_extended(sizeof(JsonbPair *) * n, MCXT_ALLOC_HUGE);
	b = palloc_extended(sizeof(JsonbPair *) * n, MCXT_ALLOC_HUGE);
	for (i = 0; i < n; i++)
		a[i] = &pairs[i];
	for (width = 1; width < n; width *= 2)
	{
		JsonbPair **t;

		for (i = 0; i < n; i += 2 * width)
		{
			int			l = i;
			int			lend = Min(i + width, n);
			int			r = lend;
			int			rend = Min(i + 2 * width, n);
			int			k = i;

			while (l < lend && r < rend)
			{
				b[k++] = pair_cmp(a[r], a[l]) < 0 ? a[r++] : a[l++];
				tick(st);
			}
			while (l < lend)
				b[k++] = a[l++];
			while (r < rend)
				b[k++] = a[r++];
		}
		t = a;
		a = b;
		b = t;
	}
	out = palloc_extended(sizeof(JsonbPair) * n, MCXT_ALLOC_HUGE);
	m = 0;
	for (i = 0; i < n; i++)
	{
		if (m > 0 && same_key(&out[m - 1], a[i]))
			continue;
		out[m++] = *a[i];
	}
	pfree(a);
	pfree(b);
	pfree(pairs);
	obj->val.object.pairs = out;
	obj->val.object.nPairs = m;
}

/*
 * Room for slot n of a level's pairs or elements.  Four to begin with, as
 * pushJsonbValue does: most containers are small, and answers of millions
 * of them must not cost more memory than jsonb_in's.
 */
static void *
grow(Level *lv, int n, void *slots, size_t size, const char *what)
{
	if (n < lv->cap)
		return slots;
	if (n >= (int) AE_JSONB_MAX_COUNT)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("number of jsonb %s exceeds the maximum allowed (%zu)",
						what, AE_JSONB_MAX_COUNT)));
	lv->cap = lv->cap ? lv->cap * 2 : 4;
	return n ? repalloc_huge(slots, size * lv->cap) : palloc(size * lv->cap);
}

static void
add_value(BuildState *st, JsonbValue *v)
{
	Level	   *lv;

	if (st->depth == 0)
	{
		if (v->type == jbvObject || v->type == jbvArray)
			st->root = *v;
		else
		{
			/* A bare scalar is stored as a one-element "raw scalar" array. */
			st->root.type = jbvArray;
			st->root.val.array.rawScalar = true;
			st->root.val.array.nElems = 1;
			st->root.val.array.elems = palloc(sizeof(JsonbValue));
			st->root.val.array.elems[0] = *v;
		}
		return;
	}
	lv = &st->levels[st->depth - 1];
	if (lv->value.type == jbvObject)
	{
		int			n = lv->value.val.object.nPairs;

		lv->value.val.object.pairs = grow(lv, n, lv->value.val.object.pairs,
										  sizeof(JsonbPair), "object pairs");
		lv->value.val.object.pairs[n].key = lv->key;
		lv->value.val.object.pairs[n].value = *v;
		lv->value.val.object.pairs[n].order = (uint32) n;
		lv->value.val.object.nPairs = n + 1;
	}
	else
	{
		int			n = lv->value.val.array.nElems;

		lv->value.val.array.elems = grow(lv, n, lv->value.val.array.elems,
										 sizeof(JsonbValue), "array elements");
		lv->value.val.array.elems[n] = *v;
		lv->value.val.array.nElems = n + 1;
	}
}

static void
push_level(BuildState *st, enum jbvType type)
{
	Level	   *lv;

	tick(st);
	if (st->depth == st->cap)
	{
		st->cap *= 2;
		st->levels = repalloc(st->levels, sizeof(Level) * st->cap);
	}
	lv = &st->levels[st->depth++];
	memset(lv, 0, sizeof(Level));
	lv->value.type = type;
}

static void
pop_level(BuildState *st)
{
	JsonbValue	v = st->levels[--st->depth].value;

	if (v.type == jbvObject)
		finish_object(st, &v);
	add_value(st, &v);
}

static void
set_string(JsonbValue *v, char *s)
{
	size_t		len = strlen(s);

	if (len > JENTRY_OFFLENMASK)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("string too long to represent as jsonb string"),
				 errdetail("Due to an implementation restriction, jsonb strings cannot exceed %d bytes.",
						   JENTRY_OFFLENMASK)));
	v->type = jbvString;
	v->val.string.val = s;
	v->val.string.len = (int) len;
}

static SemResult
on_object_start(void *state)
{
	push_level((BuildState *) state, jbvObject);
	SEM_DONE;
}

static SemResult
on_array_start(void *state)
{
	push_level((BuildState *) state, jbvArray);
	SEM_DONE;
}

static SemResult
on_end(void *state)
{
	pop_level((BuildState *) state);
	SEM_DONE;
}

static SemResult
on_field(void *state, char *fname, bool isnull)
{
	BuildState *st = (BuildState *) state;

	tick(st);
	set_string(&st->levels[st->depth - 1].key, fname);
	SEM_DONE;
}

static SemResult
on_scalar(void *state, char *token, JsonTokenType type)
{
	BuildState *st = (BuildState *) state;
	JsonbValue	v;

	tick(st);
	switch (type)
	{
		case JSON_TOKEN_STRING:
			set_string(&v, token);
			break;
		case JSON_TOKEN_NUMBER:
			v.type = jbvNumeric;
			v.val.numeric = DatumGetNumeric(InputFunctionCall(&st->numeric_in, token,
															  InvalidOid, -1));
			pfree(token);
			break;
		case JSON_TOKEN_TRUE:
		case JSON_TOKEN_FALSE:
			v.type = jbvBool;
			v.val.boolean = (type == JSON_TOKEN_TRUE);
			break;
		default:
			v.type = jbvNull;
			break;
	}
	add_value(st, &v);
	SEM_DONE;
}

/*
 * The jsonb being written.  Positions are offsets: the buffer moves as it
 * grows.
 */
typedef struct Out
{
	char	   *data;
	size_t		len;
	size_t		cap;
} Out;

static size_t
reserve(Out *o, size_t n)
{
	size_t		at = o->len;

	if (o->len + n > o->cap)
	{
		while (o->cap < o->len + n)
			o->cap *= 2;
		o->data = repalloc_huge(o->data, o->cap);
	}
	o->len += n;
	return at;
}

static void
append(Out *o, const void *p, size_t n)
{
	size_t		at = reserve(o, n);

	memcpy(o->data + at, p, n);
}

/* Zeros up to the next int boundary; numbers and containers start there. */
static uint32
pad_to_int(Out *o)
{
	uint32		pad = (uint32) (INTALIGN(o->len) - o->len);

	if (pad > 0)
	{
		size_t		at = reserve(o, pad);

		memset(o->data + at, 0, pad);
	}
	return pad;
}

static void
too_big(const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
			 errmsg("total size of jsonb %s elements exceeds the maximum of %d bytes",
					what, JENTRY_OFFLENMASK)));
}

/* A scalar's data, appended; its JEntry is returned. */
static uint32
write_scalar(Out *o, const JsonbValue *v)
{
	switch (v->type)
	{
		case jbvString:
			append(o, v->val.string.val, v->val.string.len);
			return (uint32) v->val.string.len;
		case jbvNumeric:
			{
				size_t		n = VARSIZE_ANY(v->val.numeric);
				uint32		pad = pad_to_int(o);

				append(o, v->val.numeric, n);
				return JENTRY_ISNUMERIC | (pad + (uint32) n);
			}
		case jbvBool:
			return v->val.boolean ? JENTRY_ISBOOL_TRUE : JENTRY_ISBOOL_FALSE;
		case jbvNull:
			return JENTRY_ISNULL;
		default:
			elog(ERROR, "unexpected jsonb value type %d", (int) v->type);
	}
	return 0;					/* keep the compiler quiet */
}

/*
 * Stores child i's JEntry in the container whose JEntries start at
 * entries.  Lengths add up to *total; every JB_OFFSET_STRIDE'th child
 * stores that end offset instead of its length, as jsonb's reader expects.
 */
static void
set_entry(Out *o, size_t entries, int i, uint32 meta, uint32 *total, const char *what)
{
	*total += JBE_OFFLENFLD(meta);
	if (*total > JENTRY_OFFLENMASK)
		too_big(what);
	if (i % JB_OFFSET_STRIDE == 0)
		meta = (meta & JENTRY_TYPEMASK) | *total | JENTRY_HAS_OFF;
	memcpy(o->data + entries + sizeof(JEntry) * i, &meta, sizeof(JEntry));
}

static uint32 write_value(BuildState *st, Out *o, const JsonbValue *v);

/*
 * A container: its header, its children's JEntries (an object's keys
 * first, then its values), then their data.  Its own JEntry counts the
 * padding before it.
 */
static uint32
write_container(BuildState *st, Out *o, const JsonbValue *v)
{
	size_t		base = o->len;
	bool		object = (v->type == jbvObject);
	int			n = object ? v->val.object.nPairs : v->val.array.nElems;
	const char *what = object ? "object" : "array";
	uint32		head = (uint32) n | (object ? JB_FOBJECT : JB_FARRAY);
	uint32		total = 0;
	size_t		entries;
	int			i;

	check_stack_depth();
	pad_to_int(o);
	if (!object && v->val.array.rawScalar)
		head |= JB_FSCALAR;
	append(o, &head, sizeof(head));
	entries = reserve(o, sizeof(JEntry) * (object ? 2 * (size_t) n : (size_t) n));
	if (object)
	{
		for (i = 0; i < n; i++)
			set_entry(o, entries, i, write_scalar(o, &v->val.object.pairs[i].key), &total, what);
		for (i = 0; i < n; i++)
			set_entry(o, entries, n + i, write_value(st, o, &v->val.object.pairs[i].value),
					  &total, what);
	}
	else
	{
		for (i = 0; i < n; i++)
			set_entry(o, entries, i, write_value(st, o, &v->val.array.elems[i]), &total, what);
	}
	if (o->len - base > JENTRY_OFFLENMASK)
		too_big(what);
	return JENTRY_ISCONTAINER | (uint32) (o->len - base);
}

static uint32
write_value(BuildState *st, Out *o, const JsonbValue *v)
{
	tick(st);
	if (v->type == jbvObject || v->type == jbvArray)
		return write_container(st, o, v);
	return write_scalar(o, v);
}

/* The tree as a jsonb datum; hint is a guess of its size (the text's). */
static Jsonb *
write_jsonb(BuildState *st, size_t hint)
{
	Out			o;

	o.cap = Max(hint, 1024);
	o.data = palloc_extended(o.cap, MCXT_ALLOC_HUGE);
	o.len = 0;
	reserve(&o, VARHDRSZ);
	write_container(st, &o, &st->root);
	SET_VARSIZE(o.data, o.len);
	return (Jsonb *) o.data;
}

Jsonb *
ae_parse_jsonb(char *text, size_t len)
{
	MemoryContext outcxt = CurrentMemoryContext;
	MemoryContext treecxt;
	BuildState	st;
	JsonSemAction sem;
	JsonLexContext *lex;
	JsonParseErrorType res;
	Jsonb	   *result;

	treecxt = AllocSetContextCreate(outcxt, "anthropic_env answer tree", ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(treecxt);
	memset(&st, 0, sizeof(st));
	st.cap = 16;
	st.levels = palloc(sizeof(Level) * st.cap);
	fmgr_info(F_NUMERIC_IN, &st.numeric_in);

	memset(&sem, 0, sizeof(sem));
	sem.semstate = &st;
	sem.object_start = on_object_start;
	sem.object_end = on_end;
	sem.array_start = on_array_start;
	sem.array_end = on_end;
	sem.object_field_start = on_field;
	sem.scalar = on_scalar;

#if PG_VERSION_NUM >= 170000
	lex = makeJsonLexContextCstringLen(NULL, text, len, GetDatabaseEncoding(), true);
#else
	lex = makeJsonLexContextCstringLen(text, (int) len, GetDatabaseEncoding(), true);
#endif
	res = pg_parse_json(lex, &sem);
	/* jsonb_in's own errors: valid JSON it cannot store is not a syntax error. */
	if (res == JSON_UNICODE_HIGH_ESCAPE ||
#if PG_VERSION_NUM >= 160000
		res == JSON_UNICODE_UNTRANSLATABLE ||
#endif
		res == JSON_UNICODE_CODE_POINT_ZERO)
		ereport(ERROR,
				(errcode(ERRCODE_UNTRANSLATABLE_CHARACTER),
				 errmsg("unsupported Unicode escape sequence"),
				 errdetail_internal("%s", json_errdetail(res, lex))));
	if (res != JSON_SUCCESS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("invalid input syntax for type %s", "json"),
				 errdetail_internal("%s", json_errdetail(res, lex))));
	MemoryContextSwitchTo(outcxt);
	result = write_jsonb(&st, len);
	MemoryContextDelete(treecxt);
	/* Freeing hundreds of MB takes a while too. */
	CHECK_FOR_INTERRUPTS();
	return result;
}
