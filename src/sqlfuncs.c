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
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "funcapi.h"
#include "utils/memutils.h"

#include "convert.h"
#include "sqlfuncs.h"

TupleDesc
ae_result_desc(FunctionCallInfo fcinfo)
{
	TupleDesc	desc = (TupleDesc) fcinfo->flinfo->fn_extra;

	if (desc == NULL)
	{
		MemoryContext old;

		if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("function returning record called in context that cannot accept type record")));
		old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);
		desc = BlessTupleDesc(CreateTupleDescCopy(desc));
		MemoryContextSwitchTo(old);
		fcinfo->flinfo->fn_extra = desc;
	}
	return desc;
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

	item = json_array_get(st->items, st->next++);
	msg = aej_check_shape(item, st->item_shape, errbuf, sizeof(errbuf));
	if (msg)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("malformed answer from the Anthropic API"),
				 errdetail_internal("List item %zu: %s", st->next, msg)));
	if (st->item_shape == AEJ_WORK)
		tuple = ae_work_tuple(funcctx->tuple_desc, item);
	else
		tuple = ae_environment_tuple(funcctx->tuple_desc, item);
	SRF_RETURN_NEXT(funcctx, HeapTupleGetDatum(tuple));
}
