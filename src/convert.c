/*-------------------------------------------------------------------------
 *
 * convert.c
 *		Conversion layer: parsed API answers to PostgreSQL values and rows.
 *
 * jansson is told to allocate with palloc in whatever memory context is
 * current, so a parse made during a call lives and dies with that call's
 * context; an error anywhere frees it with the context, and no PG_TRY is
 * needed around jansson.  Allocation failures come back to jansson as NULL
 * rather than as a longjmp through its code.
 *
 * A successful answer is parsed once, into the value jsonb_in would give
 * (jsonbuild.c, which also checks for interrupts): the raw columns keep
 * every number as the server wrote it (jansson keeps doubles and int64
 * only), and the cost is jsonb_in's, linear in the text.  The
 * API layer's checks and the typed columns read a jansson view of that
 * jsonb made by ae_jsonb_to_json().  For a caller that keeps raw the view
 * is shallow: of a record's containers it holds only what a check or a
 * typed column reads (config's "type", a work item's data "type" and
 * "id"; see shallow_member()).  The jsonb columns come from raw, and
 * building jansson's values for them cost more than jsonb_in itself (three
 * to seven times as much for a config of 100,000 numbers, or of millions of
 * small nested arrays).  The view checks for interrupts per 4,096 tokens
 * of the whole walk.
 * A value built here from a parsed tree (an answer the API layer made up
 * while reconciling a repeated call) sorts keys with qsort.
 *
 * This file must not include utils/builtins.h: its json_object() clashes
 * with jansson's.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <errno.h>
#include <math.h>

#include "access/htup_details.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/fmgroids.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "convert.h"
#include "jsonbuild.h"


/* Deeper answers are refused, as jansson's own parser refused them. */
#define AE_VIEW_MAX_DEPTH 2048

static void *
ae_json_alloc(size_t size)
{
	return MemoryContextAllocExtended(CurrentMemoryContext, size, MCXT_ALLOC_NO_OOM);
}

static void
ae_json_free(void *ptr)
{
	if (ptr)
		pfree(ptr);
}

void
ae_jansson_use_palloc(void)
{
	json_set_alloc_funcs(ae_json_alloc, ae_json_free);
}

char *
ae_from_utf8(const char *s, size_t len)
{
	if (GetDatabaseEncoding() == PG_UTF8)
		return pnstrdup(s, len);
	return pg_any_to_server(s, (int) len, PG_UTF8);
}

static Datum
text_datum(const char *s)
{
	size_t		len = strlen(s);
	text	   *t;

	if (GetDatabaseEncoding() != PG_UTF8)
	{
		s = pg_any_to_server(s, (int) len, PG_UTF8);
		len = strlen(s);
	}
	t = (text *) palloc(len + VARHDRSZ);
	SET_VARSIZE(t, len + VARHDRSZ);
	memcpy(VARDATA(t), s, len);
	return PointerGetDatum(t);
}

static void
set_jsonb_string(JsonbValue *jv, const char *s, size_t len)
{
	jv->type = jbvString;
	if (GetDatabaseEncoding() == PG_UTF8)
		jv->val.string.val = (char *) s;
	else
	{
		jv->val.string.val = pg_any_to_server(s, (int) len, PG_UTF8);
		len = strlen(jv->val.string.val);
	}
	jv->val.string.len = (int) len;
}

/* jsonb's key order: shorter keys first, then bytewise. */
static int
pair_cmp(const void *pa, const void *pb)
{
	const JsonbValue *a = &((const JsonbPair *) pa)->key;
	const JsonbValue *b = &((const JsonbPair *) pb)->key;

	if (a->val.string.len != b->val.string.len)
		return a->val.string.len > b->val.string.len ? 1 : -1;
	return memcmp(a->val.string.val, b->val.string.val, a->val.string.len);
}

/* The shortest text that reads back as the same double. */
static void
real_text(double d, char *buf, size_t len)
{
	int			prec;

	for (prec = 15; prec < 17; prec++)
	{
		snprintf(buf, len, "%.*g", prec, d);
		if (strtod(buf, NULL) == d)
			return;
	}
	snprintf(buf, len, "%.17g", d);
}

static int
hex4(const char *s)
{
	int			v = 0;
	int			i;

	for (i = 0; i < 4; i++)
	{
		char		c = s[i];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= c - '0';
		else if (c >= 'a' && c <= 'f')
			v |= c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			v |= c - 'A' + 10;
		else
			return -1;
	}
	return v;
}

/*
 * In SQL_ASCII, jsonb_in refuses a \u escape above 007F (it cannot
 * translate it to the server encoding) while it stores raw UTF-8 bytes as
 * they are.  Writing such escapes as their UTF-8 bytes first makes both
 * spellings of a character the same value, the one the server sent.  A
 * lone surrogate is left as written, for the parser to refuse.
 */
static char *
spell_escapes_as_utf8(const char *s, size_t len)
{
	char	   *out = palloc(len + 1);
	char	   *o = out;
	size_t		i = 0;

	while (i < len)
	{
		int			cp;

		if (s[i] != '\\' || i + 1 >= len)
		{
			*o++ = s[i++];
			continue;
		}
		if (s[i + 1] != 'u' || i + 6 > len || (cp = hex4(s + i + 2)) < 0x80)
		{
			/* Any other escape, a backslash's included, is copied whole. */
			*o++ = s[i++];
			*o++ = s[i++];
			continue;
		}
		if (cp >= 0xD800 && cp <= 0xDBFF)
		{
			int			lo = (i + 12 <= len && s[i + 6] == '\\' && s[i + 7] == 'u') ?
				hex4(s + i + 8) : -1;

			if (lo < 0xDC00 || lo > 0xDFFF)
			{
				*o++ = s[i++];
				*o++ = s[i++];
				continue;
			}
			cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
			i += 6;
		}
		else if (cp >= 0xDC00 && cp <= 0xDFFF)
		{
			*o++ = s[i++];
			*o++ = s[i++];
			continue;
		}
		unicode_to_utf8((pg_wchar) cp, (unsigned char *) o);
		o += pg_utf_mblen((unsigned char *) o);
		i += 6;
	}
	*o = '\0';
	return out;
}

Jsonb *
ae_text_to_jsonb(const char *utf8, size_t len)
{
	char	   *text = (char *) utf8;

	CHECK_FOR_INTERRUPTS();
	if (GetDatabaseEncoding() == PG_SQL_ASCII)
		text = memchr(utf8, '\\', len) ? spell_escapes_as_utf8(utf8, len) : pnstrdup(utf8, len);
	else if (GetDatabaseEncoding() != PG_UTF8)
		text = pg_any_to_server(utf8, (int) len, PG_UTF8);
	else if (utf8[len] != '\0')
		text = pnstrdup(utf8, len);
	return ae_parse_jsonb(text, text == utf8 ? len : strlen(text));
}

/*
 * The answer's text as jsonb, or NULL with *why set when it is not valid
 * JSON in UTF-8.  jsonb_in's error is caught and turned into a reason: the
 * caller reports a malformed answer, not a failed cast.
 */
Jsonb *
ae_answer_to_jsonb(const char *utf8, size_t len, const char **why)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	Jsonb	   *volatile result = NULL;

	*why = NULL;
	if (memchr(utf8, '\0', len) != NULL)
	{
		*why = "The answer holds a NUL byte.";
		return NULL;
	}
	if (pg_encoding_verifymbstr(PG_UTF8, utf8, (int) len) != (int) len)
	{
		*why = "The answer is not valid UTF-8.";
		return NULL;
	}
	PG_TRY();
	{
		result = ae_text_to_jsonb(utf8, len);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		/* A cancel or an out-of-memory is not a malformed answer. */
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
			edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN ||
			edata->sqlerrcode == ERRCODE_OUT_OF_MEMORY)
			PG_RE_THROW();
		FlushErrorState();
		/*
		 * A syntax error's detail quotes the answer's text (a work item's
		 * secret, say) and stays out.  Valid JSON that jsonb cannot hold (a
		 * character the database lacks, a number beyond numeric, a value
		 * beyond jsonb's size) is named by its code, bytes or limit only.
		 */
		if (edata->sqlerrcode == ERRCODE_UNTRANSLATABLE_CHARACTER ||
			edata->sqlerrcode == ERRCODE_CHARACTER_NOT_IN_REPERTOIRE ||
			edata->sqlerrcode == ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE ||
			edata->sqlerrcode == ERRCODE_PROGRAM_LIMIT_EXCEEDED)
			*why = psprintf("The answer cannot be stored as jsonb: %s%s%s", edata->message,
							edata->detail ? ": " : ".", edata->detail ? edata->detail : "");
		else
			*why = psprintf("The answer is not valid JSON: %s.", edata->message);
		FreeErrorData(edata);
	}
	PG_END_TRY();
	return result;
}

/*
 * The walk of one view.  Interrupts are checked per CHECK_EVERY tokens of
 * the whole walk: an answer of millions of tiny containers has no big one.
 */
typedef struct ViewState
{
	bool		shallow;
	uint32		ticks;
} ViewState;

#define VIEW_CHECK_EVERY 4096

static json_t *container_to_json(ViewState *vs, JsonbContainer *c, int depth);

/*
 * An empty jansson object.  Not json_object(): the postgres executable
 * exports a function of that name (the SQL json_object), and a call from
 * this library would bind to it.
 */
static json_t *
new_object(void)
{
	return json_pack("{}");
}

static Numeric
numeric_const(const char *s)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
	Numeric		n = DatumGetNumeric(OidInputFunctionCall(F_NUMERIC_IN, (char *) s,
														 InvalidOid, -1));

	MemoryContextSwitchTo(old);
	return n;
}

/*
 * Whether the number lies within a double's range (zero included), where
 * its text is at most a few hundred characters longer than the server's.
 * numeric_cmp looks at the weights first, so this costs no digits.
 */
static bool
numeric_prints_short(Numeric n)
{
	static Numeric largest = NULL;
	static Numeric smallest = NULL;
	static Numeric zero = NULL;
	Datum		a;
	bool		short_enough;

	if (largest == NULL)
	{
		largest = numeric_const("1.7976931348623157e308");
		smallest = numeric_const("1e-300");
		zero = numeric_const("0");
	}
	a = OidFunctionCall1(F_NUMERIC_ABS, NumericGetDatum(n));
	if (DatumGetInt32(OidFunctionCall2(F_NUMERIC_CMP, a, NumericGetDatum(zero))) == 0)
		short_enough = true;
	else
		short_enough = DatumGetInt32(OidFunctionCall2(F_NUMERIC_CMP, a, NumericGetDatum(largest))) <= 0 &&
			DatumGetInt32(OidFunctionCall2(F_NUMERIC_CMP, a, NumericGetDatum(smallest))) >= 0;
	/* Millions of numbers in one answer: their copies go at once. */
	pfree(DatumGetPointer(a));
	return short_enough;
}

static json_t *
scalar_to_json(ViewState *vs, JsonbValue *v, int depth)
{
	switch (v->type)
	{
		case jbvString:
			{
				char	   *s = v->val.string.val;
				int			len = v->val.string.len;

				/*
				 * A jsonb string has no terminating NUL, and
				 * pg_server_to_any hands its input back unchanged in
				 * SQL_ASCII: convert a terminated copy.
				 */
				if (GetDatabaseEncoding() != PG_UTF8)
				{
					s = pg_server_to_any(pnstrdup(s, len), len, PG_UTF8);
					len = (int) strlen(s);
				}
				return json_stringn_nocheck(s, len);
			}
		case jbvNumeric:
			{
				char	   *t;
				double		d;

				/*
				 * numeric_out writes every digit: 1e130000 would be 130001
				 * characters from 8.  Beyond what a double holds the view
				 * reads 0, as it does for what strtod cannot hold.
				 */
				if (!numeric_prints_short(v->val.numeric))
					return json_real(0);
				t = OidOutputFunctionCall(F_NUMERIC_OUT, NumericGetDatum(v->val.numeric));

				if (strpbrk(t, ".eE") == NULL)
				{
					char	   *end;
					long long	i;

					errno = 0;
					i = strtoll(t, &end, 10);
					if (errno == 0 && *end == '\0')
					{
						pfree(t);
						return json_integer((json_int_t) i);
					}
				}
				/* As jansson would read it; 0 where a double cannot hold it. */
				errno = 0;
				d = strtod(t, NULL);
				if (errno == ERANGE && (d == HUGE_VAL || d == -HUGE_VAL))
					d = 0;
				pfree(t);
				return json_real(d);
			}
		case jbvBool:
			return json_boolean(v->val.boolean);
		case jbvBinary:
			return container_to_json(vs, v->val.binary.data, depth + 1);
		case jbvNull:
		default:
			return json_null();
	}
}

static json_t *
empty_like(JsonbContainer *c)
{
	return JsonContainerIsObject(c) ? new_object() : json_pack("[]");
}

/*
 * A member of a record in a shallow view: what a check or a typed column
 * reads of it, no more.  An object keeps only its "type" and "id" (config's
 * type, a work item's data), a container among them left empty; metadata
 * is read from raw and is empty here; an array is empty, but for a page's
 * "data", whose records are viewed the same way.
 */
static json_t *
shallow_member(ViewState *vs, const char *key, JsonbContainer *c, int depth)
{
	static const char *const kept[] = {"type", "id"};
	json_t	   *out;
	int			i;

	if (!JsonContainerIsObject(c))
		return strcmp(key, "data") == 0 ? container_to_json(vs, c, depth + 1) : json_pack("[]");
	out = new_object();
	if (out == NULL || strcmp(key, "metadata") == 0)
		return out;
	for (i = 0; i < (int) lengthof(kept); i++)
	{
		JsonbValue	buf;
		JsonbValue *v = getKeyJsonValueFromContainer(c, kept[i], strlen(kept[i]), &buf);
		json_t	   *item;

		if (v == NULL)
			continue;
		item = v->type == jbvBinary ? empty_like(v->val.binary.data) : scalar_to_json(vs, v, depth + 1);
		if (item == NULL || json_object_set_new_nocheck(out, kept[i], item) != 0)
			return NULL;
	}
	return out;
}

static json_t *
container_to_json(ViewState *vs, JsonbContainer *c, int depth)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	json_t	   *out = NULL;
	json_t	   *item;
	char	   *key = NULL;

	if (depth > AE_VIEW_MAX_DEPTH)
		return NULL;
	check_stack_depth();
	it = JsonbIteratorInit(c);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if ((++vs->ticks % VIEW_CHECK_EVERY) == 0)
			CHECK_FOR_INTERRUPTS();
		switch (tok)
		{
			case WJB_BEGIN_OBJECT:
				out = new_object();
				if (out == NULL)
					return NULL;
				break;
			case WJB_BEGIN_ARRAY:
				out = json_pack("[]");
				if (out == NULL)
					return NULL;
				break;
			case WJB_KEY:
				key = pnstrdup(v.val.string.val, v.val.string.len);
				if (GetDatabaseEncoding() != PG_UTF8)
					key = pg_server_to_any(key, (int) strlen(key), PG_UTF8);
				break;
			case WJB_VALUE:
				if (vs->shallow && v.type == jbvBinary)
					item = shallow_member(vs, key, v.val.binary.data, depth);
				else
					item = scalar_to_json(vs, &v, depth);
				if (item == NULL || json_object_set_new_nocheck(out, key, item) != 0)
					return NULL;
				break;
			case WJB_ELEM:
				item = scalar_to_json(vs, &v, depth);
				if (item == NULL || json_array_append_new(out, item) != 0)
					return NULL;
				break;
			default:
				break;
		}
	}
	return out;
}

json_t *
ae_jsonb_to_json(Jsonb *jb, bool shallow)
{
	JsonbValue	v;
	ViewState	vs = {shallow, 0};

	/* A bare scalar is a one-element "raw scalar" array in jsonb. */
	if (JB_ROOT_IS_SCALAR(jb))
	{
		JsonbExtractScalar(&jb->root, &v);
		return scalar_to_json(&vs, &v, 0);
	}
	return container_to_json(&vs, &jb->root, 1);
}

/*
 * Builds the JsonbValue tree of a parsed value directly, objects' keys
 * sorted the way jsonb stores them; JsonbValueToJsonb() then serializes it
 * in one pass.  Keys are unique already: jansson keeps only the last of
 * duplicate keys.
 */
static void
json_to_jbv(json_t *v, JsonbValue *out)
{
	char		buf[64];

	switch (json_typeof(v))
	{
		case JSON_OBJECT:
			{
				size_t		n = json_object_size(v);
				JsonbPair  *pairs;
				const char *key;
				json_t	   *val;
				size_t		i = 0;

				check_stack_depth();
				pairs = palloc(sizeof(JsonbPair) * Max(n, 1));
				json_object_foreach(v, key, val)
				{
					JsonbPair  *p = &pairs[i];

					if ((i & 1023) == 0)
						CHECK_FOR_INTERRUPTS();
					set_jsonb_string(&p->key, key, strlen(key));
					json_to_jbv(val, &p->value);
					p->order = (uint32) i;
					i++;
				}
				if (n > 1)
					qsort(pairs, n, sizeof(JsonbPair), pair_cmp);
				out->type = jbvObject;
				out->val.object.nPairs = (int) n;
				out->val.object.pairs = pairs;
				return;
			}
		case JSON_ARRAY:
			{
				size_t		n = json_array_size(v);
				JsonbValue *elems;
				size_t		i;
				json_t	   *val;

				check_stack_depth();
				elems = palloc(sizeof(JsonbValue) * Max(n, 1));
				json_array_foreach(v, i, val)
				{
					if ((i & 1023) == 0)
						CHECK_FOR_INTERRUPTS();
					json_to_jbv(val, &elems[i]);
				}
				out->type = jbvArray;
				out->val.array.nElems = (int) n;
				out->val.array.elems = elems;
				out->val.array.rawScalar = false;
				return;
			}
		case JSON_STRING:
			set_jsonb_string(out, json_string_value(v), json_string_length(v));
			return;
		case JSON_INTEGER:
			out->type = jbvNumeric;
			out->val.numeric = int64_to_numeric((int64) json_integer_value(v));
			return;
		case JSON_REAL:
			out->type = jbvNumeric;
			real_text(json_real_value(v), buf, sizeof(buf));
			out->val.numeric = DatumGetNumeric(OidInputFunctionCall(F_NUMERIC_IN, buf,
																	InvalidOid, -1));
			return;
		case JSON_TRUE:
		case JSON_FALSE:
			out->type = jbvBool;
			out->val.boolean = json_is_true(v);
			return;
		case JSON_NULL:
		default:
			out->type = jbvNull;
			return;
	}
}

Jsonb *
ae_json_to_jsonb(json_t *value)
{
	JsonbValue	root;

	if (json_is_object(value) || json_is_array(value))
		json_to_jbv(value, &root);
	else
	{
		/* A bare scalar is stored as a one-element "raw scalar" array. */
		JsonbValue *elem = palloc(sizeof(JsonbValue));

		json_to_jbv(value, elem);
		root.type = jbvArray;
		root.val.array.rawScalar = true;
		root.val.array.nElems = 1;
		root.val.array.elems = elem;
	}
	return JsonbValueToJsonb(&root);
}

/* Sets value/isnull from a string member. */
static void
put_text(json_t *obj, const char *key, Datum *value, bool *isnull)
{
	const char *s = aej_string(obj, key);

	*isnull = (s == NULL);
	if (s)
		*value = text_datum(s);
}

/* Sets value/isnull from an RFC 3339 member; the shape check parsed it once. */
static bool
time_datum(const char *s, Datum *value)
{
	AejTime		t;
	struct pg_tm tm;
	Timestamp	ts;
	int			tz;

	if (s == NULL || !aej_parse_time(s, &t))
		return false;
	memset(&tm, 0, sizeof(tm));
	tm.tm_year = t.year;
	tm.tm_mon = t.month;
	tm.tm_mday = t.day;
	tm.tm_hour = t.hour;
	tm.tm_min = t.minute;
	tm.tm_sec = t.second;
	tz = -t.offset_s;			/* PostgreSQL counts seconds west of UTC */
	if (tm2timestamp(&tm, t.usec, &tz, &ts) != 0 || !IS_VALID_TIMESTAMP(ts))
		return false;
	*value = TimestampTzGetDatum(ts);
	return true;
}

static void
put_time(json_t *obj, const char *key, Datum *value, bool *isnull)
{
	*isnull = !time_datum(aej_string(obj, key), value);
}

Jsonb *
ae_jsonb_array_item(Jsonb *page, const char *key, uint32 i)
{
	JsonbValue	buf;
	JsonbValue *arr;
	JsonbValue *item;

	if (page == NULL)
		return NULL;
	arr = getKeyJsonValueFromContainer(&page->root, key, strlen(key), &buf);
	if (arr == NULL || arr->type != jbvBinary)
		return NULL;
	item = getIthJsonbValueFromContainer(arr->val.binary.data, i);
	return item ? JsonbValueToJsonb(item) : NULL;
}

/*
 * Copying a member's binary container out of the already built raw jsonb
 * is far cheaper than building it again, and keeps its numbers as written.
 */
Jsonb *
ae_jsonb_member(Jsonb *obj, const char *key)
{
	JsonbValue	buf;
	JsonbValue *v;

	if (obj == NULL || !JB_ROOT_IS_OBJECT(obj))
		return NULL;
	v = getKeyJsonValueFromContainer(&obj->root, key, strlen(key), &buf);
	if (v == NULL || v->type == jbvNull)
		return NULL;
	return JsonbValueToJsonb(v);
}

static void
put_jsonb_from_raw(Jsonb *raw, const char *key, Datum *value, bool *isnull)
{
	Jsonb	   *v = ae_jsonb_member(raw, key);

	*isnull = (v == NULL);
	if (v)
		*value = JsonbPGetDatum(v);
	CHECK_FOR_INTERRUPTS();
}

static void
check_natts(TupleDesc desc, int natts)
{
	if (desc->natts != natts)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("row type has %d columns, expected %d", desc->natts, natts),
				 errhint("The extension's SQL objects do not match its library; run ALTER EXTENSION anthropic_env UPDATE.")));
}

HeapTuple
ae_environment_tuple(TupleDesc desc, json_t *obj, Jsonb *raw)
{
	Datum		values[11];
	bool		nulls[11];
	json_t	   *config = json_object_get(obj, "config");

	check_natts(desc, 11);
	if (raw == NULL)
		raw = ae_json_to_jsonb(obj);
	put_text(obj, "id", &values[0], &nulls[0]);
	put_text(obj, "name", &values[1], &nulls[1]);
	put_text(obj, "description", &values[2], &nulls[2]);
	if (json_is_object(config))
		put_text(config, "type", &values[3], &nulls[3]);
	else
		nulls[3] = true;
	put_jsonb_from_raw(raw, "config", &values[4], &nulls[4]);
	put_jsonb_from_raw(raw, "metadata", &values[5], &nulls[5]);
	put_text(obj, "scope", &values[6], &nulls[6]);
	put_time(obj, "created_at", &values[7], &nulls[7]);
	put_time(obj, "updated_at", &values[8], &nulls[8]);
	put_time(obj, "archived_at", &values[9], &nulls[9]);
	values[10] = JsonbPGetDatum(raw);
	nulls[10] = false;
	/* Each copy of a large answer takes tens of ms: look between them. */
	CHECK_FOR_INTERRUPTS();
	return heap_form_tuple(desc, values, nulls);
}

HeapTuple
ae_work_tuple(TupleDesc desc, json_t *obj, Jsonb *raw)
{
	Datum		values[14];
	bool		nulls[14];
	json_t	   *data = json_object_get(obj, "data");

	check_natts(desc, 14);
	if (raw == NULL)
		raw = ae_json_to_jsonb(obj);
	put_text(obj, "id", &values[0], &nulls[0]);
	put_text(obj, "environment_id", &values[1], &nulls[1]);
	put_text(obj, "state", &values[2], &nulls[2]);
	if (json_is_object(data))
	{
		put_text(data, "type", &values[3], &nulls[3]);
		put_text(data, "id", &values[4], &nulls[4]);
	}
	else
		nulls[3] = nulls[4] = true;
	put_jsonb_from_raw(raw, "metadata", &values[5], &nulls[5]);
	put_time(obj, "created_at", &values[6], &nulls[6]);
	put_time(obj, "acknowledged_at", &values[7], &nulls[7]);
	put_time(obj, "started_at", &values[8], &nulls[8]);
	put_time(obj, "latest_heartbeat_at", &values[9], &nulls[9]);
	put_time(obj, "stop_requested_at", &values[10], &nulls[10]);
	put_time(obj, "stopped_at", &values[11], &nulls[11]);
	put_text(obj, "secret", &values[12], &nulls[12]);
	values[13] = JsonbPGetDatum(raw);
	nulls[13] = false;
	CHECK_FOR_INTERRUPTS();
	return heap_form_tuple(desc, values, nulls);
}

HeapTuple
ae_heartbeat_tuple(TupleDesc desc, json_t *obj)
{
	Datum		values[5];
	bool		nulls[5];
	json_t	   *lease = json_object_get(obj, "lease_extended");
	json_t	   *ttl = json_object_get(obj, "ttl_seconds");

	check_natts(desc, 5);
	put_text(obj, "last_heartbeat", &values[0], &nulls[0]);
	nulls[1] = !time_datum(aej_string(obj, "last_heartbeat"), &values[1]);
	nulls[2] = !json_is_boolean(lease);
	values[2] = BoolGetDatum(json_is_true(lease));
	put_text(obj, "state", &values[3], &nulls[3]);
	nulls[4] = !json_is_integer(ttl);
	values[4] = Int32GetDatum(nulls[4] ? 0 : (int32) json_integer_value(ttl));
	return heap_form_tuple(desc, values, nulls);
}

HeapTuple
ae_queue_stats_tuple(TupleDesc desc, json_t *obj)
{
	Datum		values[4];
	bool		nulls[4];
	json_t	   *depth = json_object_get(obj, "depth");
	json_t	   *pending = json_object_get(obj, "pending");
	json_t	   *workers = json_object_get(obj, "workers_polling");

	check_natts(desc, 4);
	nulls[0] = !json_is_integer(depth);
	values[0] = Int64GetDatum(nulls[0] ? 0 : (int64) json_integer_value(depth));
	nulls[1] = !json_is_integer(pending);
	values[1] = Int64GetDatum(nulls[1] ? 0 : (int64) json_integer_value(pending));
	put_time(obj, "oldest_queued_at", &values[2], &nulls[2]);
	nulls[3] = !json_is_integer(workers);
	values[3] = Int32GetDatum(nulls[3] ? 0 : (int32) json_integer_value(workers));
	return heap_form_tuple(desc, values, nulls);
}
