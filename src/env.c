/*-------------------------------------------------------------------------
 *
 * env.c
 *		SQL functions for environments: create, get, list, update, delete,
 *		archive.
 *
 * Each function checks its arguments before anything is sent, fills an
 * AeCall for its endpoint and turns the answer into a row.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type_d.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/jsonb.h"
#include "utils/tuplestore.h"

#include "api.h"
#include "convert.h"
#include "sqlfuncs.h"

PG_FUNCTION_INFO_V1(ae_env_create);
PG_FUNCTION_INFO_V1(ae_env_get);
PG_FUNCTION_INFO_V1(ae_env_list_rows);
PG_FUNCTION_INFO_V1(ae_env_list_page);
PG_FUNCTION_INFO_V1(ae_env_update);
PG_FUNCTION_INFO_V1(ae_env_delete);
PG_FUNCTION_INFO_V1(ae_env_archive);
PG_FUNCTION_INFO_V1(ae_env_get_many);

static Datum
environment_result(FunctionCallInfo fcinfo, AeCall *call)
{
	Jsonb	   *raw = NULL;
	json_t	   *obj;

	call->raw_out = &raw;
	obj = ae_api_call(call);
	if (obj == NULL)
		PG_RETURN_NULL();
	return HeapTupleGetDatum(ae_environment_tuple(ae_result_desc(fcinfo), obj, raw));
}

static Datum
env_create_body(FunctionCallInfo fcinfo)
{
	AeCall		call = {.endpoint = AE_ENV_CREATE};

	call.body = ae_object_body("body", PG_GETARG_JSONB_P(0));
	return environment_result(fcinfo, &call);
}

Datum
ae_env_create(PG_FUNCTION_ARGS)
{
	return ae_call_once(fcinfo, env_create_body);
}

static Datum
env_get_body(FunctionCallInfo fcinfo)
{
	AeCall		call = {.endpoint = AE_ENV_GET};

	call.args[0] = ae_id_arg(fcinfo, 0, "environment_id");
	call.missing_ok = PG_GETARG_BOOL(1);
	return environment_result(fcinfo, &call);
}

Datum
ae_env_get(PG_FUNCTION_ARGS)
{
	return ae_call_once(fcinfo, env_get_body);
}

Datum
ae_env_list_rows(PG_FUNCTION_ARGS)
{
	AeCall		call = {.endpoint = AE_ENV_LIST};

	if (SRF_IS_FIRSTCALL())
	{
		int			page_size = PG_GETARG_INT32(1);

		ae_check_page_size("page_size", page_size);
		call.query[0].name = "include_archived";
		call.query[0].value = PG_GETARG_BOOL(0) ? "true" : NULL;
		call.query[1].name = "limit";
		call.query[1].value = psprintf("%d", page_size);
	}
	call.query[2].name = "page";
	return ae_list_srf(fcinfo, &call);
}

Datum
ae_env_list_page(PG_FUNCTION_ARGS)
{
	AeCall		call = {.endpoint = AE_ENV_LIST};

	call.query[0].name = "include_archived";
	if (!PG_ARGISNULL(2) && PG_GETARG_BOOL(2))
		call.query[0].value = "true";
	call.query[1].name = "limit";
	if (!PG_ARGISNULL(0))
	{
		ae_check_page_size("page_limit", PG_GETARG_INT32(0));
		call.query[1].value = psprintf("%d", PG_GETARG_INT32(0));
	}
	call.query[2].name = "page";
	if (!PG_ARGISNULL(1))
		call.query[2].value = ae_text_arg(fcinfo, 1);
	{
		Jsonb	   *raw = NULL;
		json_t	   *page;

		call.raw_out = &raw;
		page = ae_api_call(&call);
		PG_RETURN_JSONB_P(raw ? raw : ae_json_to_jsonb(page));
	}
}

static Datum
env_update_body(FunctionCallInfo fcinfo)
{
	AeCall		call = {.endpoint = AE_ENV_UPDATE};

	call.args[0] = ae_id_arg(fcinfo, 0, "environment_id");
	call.body = ae_object_body("patch", PG_GETARG_JSONB_P(1));
	return environment_result(fcinfo, &call);
}

Datum
ae_env_update(PG_FUNCTION_ARGS)
{
	return ae_call_once(fcinfo, env_update_body);
}

Datum
ae_env_delete(PG_FUNCTION_ARGS)
{
	AeCall		call = {.endpoint = AE_ENV_DELETE};

	call.args[0] = ae_id_arg(fcinfo, 0, "environment_id");
	call.missing_ok = PG_GETARG_BOOL(1);
	PG_RETURN_BOOL(ae_api_call(&call) != NULL);
}

static Datum
env_archive_body(FunctionCallInfo fcinfo)
{
	AeCall		call = {.endpoint = AE_ENV_ARCHIVE};

	call.args[0] = ae_id_arg(fcinfo, 0, "environment_id");
	return environment_result(fcinfo, &call);
}

Datum
ae_env_archive(PG_FUNCTION_ARGS)
{
	return ae_call_once(fcinfo, env_archive_body);
}

Datum
ae_env_get_many(PG_FUNCTION_ARGS)
{
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(0);
	int			concurrency = PG_GETARG_INT32(1);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum	   *elems;
	bool	   *elem_nulls;
	int			nelems;
	int			n = 0;
	int			missing = 0;
	int			i;
	AeCall	   *calls;
	json_t	  **results;
	Jsonb	  **raws;

	if (concurrency < 1 || concurrency > AE_MAX_CONCURRENCY)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("concurrency must be between 1 and %d", AE_MAX_CONCURRENCY)));
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("environment_ids must be a one-dimensional array")));

	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &elem_nulls, &nelems);
	calls = palloc0(sizeof(AeCall) * Max(nelems, 1));
	results = palloc0(sizeof(json_t *) * Max(nelems, 1));
	raws = palloc0(sizeof(Jsonb *) * Max(nelems, 1));

	/* Every id is checked before anything is sent; NULLs have no answer. */
	for (i = 0; i < nelems; i++)
	{
		text	   *t;

		if (elem_nulls[i])
			continue;
		t = DatumGetTextPP(elems[i]);
		calls[n].endpoint = AE_ENV_GET;
		calls[n].args[0] = pnstrdup(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
		calls[n].missing_ok = true;
		calls[n].raw_out = &raws[n];
		ae_check_id("environment_id", calls[n].args[0]);
		n++;
	}

	InitMaterializedSRF(fcinfo, MAT_SRF_BLESS);
	ae_api_call_many(calls, n, concurrency, results);
	for (i = 0; i < n; i++)
	{
		if (results[i] == NULL)
			missing++;
		else
			tuplestore_puttuple(rsinfo->setResult,
								ae_environment_tuple(rsinfo->setDesc, results[i], raws[i]));
	}
	if (missing > 0)
		ereport(NOTICE,
				(errmsg("%d of %d environments do not exist and were skipped", missing, n)));
	return (Datum) 0;
}
