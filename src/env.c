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

#include "fmgr.h"
#include "funcapi.h"
#include "utils/jsonb.h"

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

static Datum
environment_result(FunctionCallInfo fcinfo, json_t *obj)
{
	if (obj == NULL)
		PG_RETURN_NULL();
	return HeapTupleGetDatum(ae_environment_tuple(ae_result_desc(fcinfo), obj));
}

static char *
id_arg(FunctionCallInfo fcinfo, int argno, const char *argname)
{
	char	   *id = ae_text_arg(fcinfo, argno);

	ae_check_id(argname, id);
	return id;
}

Datum
ae_env_create(PG_FUNCTION_ARGS)
{
	AeCall		call = {.endpoint = AE_ENV_CREATE};

	call.body = ae_object_body("body", PG_GETARG_JSONB_P(0));
	return environment_result(fcinfo, ae_api_call(&call));
}

Datum
ae_env_get(PG_FUNCTION_ARGS)
{
	AeCall		call = {.endpoint = AE_ENV_GET};

	call.args[0] = id_arg(fcinfo, 0, "environment_id");
	call.missing_ok = PG_GETARG_BOOL(1);
	return environment_result(fcinfo, ae_api_call(&call));
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
	PG_RETURN_JSONB_P(ae_json_to_jsonb(ae_api_call(&call)));
}

Datum
ae_env_update(PG_FUNCTION_ARGS)
{
	AeCall		call = {.endpoint = AE_ENV_UPDATE};

	call.args[0] = id_arg(fcinfo, 0, "environment_id");
	call.body = ae_object_body("patch", PG_GETARG_JSONB_P(1));
	return environment_result(fcinfo, ae_api_call(&call));
}

Datum
ae_env_delete(PG_FUNCTION_ARGS)
{
	AeCall		call = {.endpoint = AE_ENV_DELETE};

	call.args[0] = id_arg(fcinfo, 0, "environment_id");
	call.missing_ok = PG_GETARG_BOOL(1);
	PG_RETURN_BOOL(ae_api_call(&call) != NULL);
}

Datum
ae_env_archive(PG_FUNCTION_ARGS)
{
	AeCall		call = {.endpoint = AE_ENV_ARCHIVE};

	call.args[0] = id_arg(fcinfo, 0, "environment_id");
	return environment_result(fcinfo, ae_api_call(&call));
}
