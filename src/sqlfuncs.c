/*-------------------------------------------------------------------------
 *
 * sqlfuncs.c
 *		Plumbing shared by the SQL-callable functions: result types, JSON
 *		bodies, and the lazy list SRF.
 *
 * The list SRF returns one row per call and fetches the next page only
 * when the current one is used up.  Each page lives in its own memory
 * context, reset before the next fetch, so memory stays at one page.
 * PostgreSQL materializes SRFs called in FROM, so the SQL-level list
 * functions are inlinable SQL wrappers that call this SRF from a target
 * list, where rows stream and a LIMIT stops the fetching.
 *
 * PostgreSQL expands (f(x)).* into one copy of the call per column, each
 * with its own FmgrInfo, all made from one parse node and so sharing its
 * location.  ae_call_once() lets those copies share one request per row:
 * copies of one call site (same function, location and arguments) in one
 * query count their calls, and a copy whose n-th call another copy has
 * already made takes that call's result.  A call the query runs once per
 * row is one copy called again, so it still sends one request per row.
 * Where the location is unknown (a view's stored query keeps none), every
 * copy runs on its own.  A call in FROM is run once per scan by its
 * FunctionScan, which is the only caller that passes a ReturnSetInfo to a
 * function that returns no set; it shares nothing, so its row is not
 * copied (a large answer's row takes tens of ms to copy, and no interrupt
 * is seen inside a copy).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/nodeFuncs.h"
#include "utils/datum.h"
#include "utils/memutils.h"

#include "convert.h"
#include "sqlfuncs.h"

/* The result of one call site's latest call, shared by its copies. */
typedef struct AeCallSite
{
	struct AeCallSite *next;
	MemoryContext cxt;			/* the query's; the entry lives in it */
	Oid			fn_oid;
	int			location;
	Node	   *expr;
	uint64		calls;			/* number of the call whose result is held */
	bool		isnull;
	Datum		value;			/* a composite datum, in cxt */
	MemoryContextCallback cb;
} AeCallSite;

/* What one copy of a call keeps in fn_extra. */
typedef struct AeFnState
{
	TupleDesc	desc;
	AeCallSite *site;			/* NULL: no sharing */
	uint64		calls;
	bool		site_known;
} AeFnState;

static AeCallSite *ae_sites = NULL;

static void
forget_site(void *arg)
{
	AeCallSite **p;

	for (p = &ae_sites; *p; p = &(*p)->next)
	{
		if (*p == (AeCallSite *) arg)
		{
			*p = (*p)->next;
			return;
		}
	}
}

static AeFnState *
fn_state(FunctionCallInfo fcinfo)
{
	AeFnState  *st = (AeFnState *) fcinfo->flinfo->fn_extra;

	if (st == NULL)
	{
		st = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(AeFnState));
		fcinfo->flinfo->fn_extra = st;
	}
	return st;
}

TupleDesc
ae_result_desc(FunctionCallInfo fcinfo)
{
	AeFnState  *st = fn_state(fcinfo);

	if (st->desc == NULL)
	{
		MemoryContext old;
		TupleDesc	desc;

		if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("function returning record called in context that cannot accept type record")));
		old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);
		st->desc = BlessTupleDesc(CreateTupleDescCopy(desc));
		MemoryContextSwitchTo(old);
	}
	return st->desc;
}

static AeCallSite *
find_site(FunctionCallInfo fcinfo)
{
	FmgrInfo   *flinfo = fcinfo->flinfo;
	Node	   *expr = flinfo->fn_expr;
	int			location = expr ? exprLocation(expr) : -1;
	AeCallSite *site;

	if (location < 0)
		return NULL;
	for (site = ae_sites; site; site = site->next)
		if (site->cxt == flinfo->fn_mcxt && site->fn_oid == flinfo->fn_oid &&
			site->location == location && equal(site->expr, expr))
			return site;
	site = MemoryContextAllocZero(flinfo->fn_mcxt, sizeof(AeCallSite));
	site->cxt = flinfo->fn_mcxt;
	site->fn_oid = flinfo->fn_oid;
	site->location = location;
	site->expr = expr;
	site->cb.func = forget_site;
	site->cb.arg = site;
	MemoryContextRegisterResetCallback(site->cxt, &site->cb);
	site->next = ae_sites;
	ae_sites = site;
	return site;
}

Datum
ae_call_once(FunctionCallInfo fcinfo, Datum (*body) (FunctionCallInfo fcinfo))
{
	AeFnState  *st;
	AeCallSite *site;
	Datum		result;

	if (fcinfo->resultinfo && IsA(fcinfo->resultinfo, ReturnSetInfo))
		return body(fcinfo);
	st = fn_state(fcinfo);
	if (!st->site_known)
	{
		st->site = find_site(fcinfo);
		st->site_known = true;
	}
	site = st->site;
	st->calls++;
	if (site && site->calls == st->calls)
	{
		if (site->isnull)
			PG_RETURN_NULL();
		return datumCopy(site->value, false, -1);
	}

	result = body(fcinfo);
	if (site)
	{
		if (!site->isnull && site->calls > 0)
			pfree(DatumGetPointer(site->value));
		site->isnull = fcinfo->isnull;
		if (!fcinfo->isnull)
		{
			MemoryContext old = MemoryContextSwitchTo(site->cxt);

			site->value = datumCopy(result, false, -1);
			MemoryContextSwitchTo(old);
		}
		site->calls = st->calls;
	}
	return result;
}

char *
ae_text_arg(FunctionCallInfo fcinfo, int argno)
{
	text	   *t = PG_GETARG_TEXT_PP(argno);

	return pnstrdup(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
}

char *
ae_id_arg(FunctionCallInfo fcinfo, int argno, const char *argname)
{
	char	   *id;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", argname)));
	id = ae_text_arg(fcinfo, argno);
	ae_check_id(argname, id);
	return id;
}

char *
ae_object_body(const char *argname, Jsonb *body)
{
	if (!JB_ROOT_IS_OBJECT(body) || JB_ROOT_IS_SCALAR(body))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a JSON object", argname)));
	return JsonbToCString(NULL, &body->root, VARSIZE(body));
}

typedef struct AeListState
{
	AeCall		call;
	int			page_slot;		/* query slot that carries the cursor */
	MemoryContext page_cxt;		/* holds the current page only */
	json_t	   *items;
	Jsonb	   *page_raw;		/* the page as jsonb, numbers as written */
	size_t		next;
	char	   *cursor;			/* next page's cursor, in the SRF context */
	bool		fetched;
	AejShape	item_shape;
} AeListState;

static void
fetch_page(AeListState *st, MemoryContext srf_cxt)
{
	MemoryContext old;
	json_t	   *page;
	json_t	   *next;

	MemoryContextReset(st->page_cxt);
	old = MemoryContextSwitchTo(st->page_cxt);
	st->call.query[st->page_slot].value = st->cursor;
	st->page_raw = NULL;
	st->call.raw_out = &st->page_raw;
	page = ae_api_call(&st->call);
	MemoryContextSwitchTo(old);

	st->items = json_object_get(page, "data");
	st->next = 0;
	st->fetched = true;
	if (st->cursor)
		pfree(st->cursor);
	st->cursor = NULL;
	next = json_object_get(page, "next_page");
	/* A null or empty cursor ends the list. */
	if (json_is_string(next) && json_string_length(next) > 0)
		st->cursor = MemoryContextStrdup(srf_cxt, json_string_value(next));
}

Datum
ae_list_srf(FunctionCallInfo fcinfo, const AeCall *call)
{
	FuncCallContext *funcctx;
	AeListState *st;
	json_t	   *item;
	HeapTuple	tuple;
	Jsonb	   *raw;
	char		errbuf[256];
	const char *msg;

	if (SRF_IS_FIRSTCALL())
	{
		MemoryContext old;
		TupleDesc	desc;
		int			i;

		funcctx = SRF_FIRSTCALL_INIT();
		old = MemoryContextSwitchTo(funcctx->multi_call_memory_ctx);
		if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("function returning record called in context that cannot accept type record")));
		funcctx->tuple_desc = BlessTupleDesc(CreateTupleDescCopy(desc));

		st = palloc0(sizeof(AeListState));
		st->call = *call;
		st->page_slot = -1;
		for (i = 0; i < 2; i++)
			if (call->args[i])
				st->call.args[i] = pstrdup(call->args[i]);
		for (i = 0; i < AE_MAX_QUERY; i++)
		{
			if (call->query[i].value)
				st->call.query[i].value = pstrdup(call->query[i].value);
			if (call->query[i].name && strcmp(call->query[i].name, "page") == 0)
				st->page_slot = i;
		}
		Assert(st->page_slot >= 0);
		st->item_shape = ae_endpoint_item_shape(call->endpoint);
		st->page_cxt = AllocSetContextCreate(funcctx->multi_call_memory_ctx,
											 "anthropic_env list page",
											 ALLOCSET_DEFAULT_SIZES);
		funcctx->user_fctx = st;
		MemoryContextSwitchTo(old);
	}

	funcctx = SRF_PERCALL_SETUP();
	st = (AeListState *) funcctx->user_fctx;

	while (st->items == NULL || st->next >= json_array_size(st->items))
	{
		if (st->fetched && st->cursor == NULL)
			SRF_RETURN_DONE(funcctx);
		fetch_page(st, funcctx->multi_call_memory_ctx);
	}

	CHECK_FOR_INTERRUPTS();
	item = json_array_get(st->items, st->next++);
	msg = aej_check_shape(item, st->item_shape, errbuf, sizeof(errbuf));
	if (msg)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("malformed answer from the Anthropic API"),
				 errdetail_internal("List item %zu: %s", st->next, msg)));
	raw = ae_jsonb_array_item(st->page_raw, "data", (uint32) (st->next - 1));
	if (st->item_shape == AEJ_WORK)
		tuple = ae_work_tuple(funcctx->tuple_desc, item, raw);
	else
		tuple = ae_environment_tuple(funcctx->tuple_desc, item, raw);
	SRF_RETURN_NEXT(funcctx, HeapTupleGetDatum(tuple));
}
