/*-------------------------------------------------------------------------
 *
 * work.c
 *		SQL functions for a self-hosted environment's work queue: poll, ack,
 *		heartbeat, stop, get, list, update, stats.
 *
 * poll, ack, heartbeat, stop and list authenticate with
 * anthropic.environment_key when it is set (the endpoint table in api.c
 * says so); the rest with the API key.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "utils/jsonb.h"
#include "utils/tuplestore.h"

#include "api.h"
#include "convert.h"
#include "sqlfuncs.h"

PG_FUNCTION_INFO_V1(ae_work_poll);
PG_FUNCTION_INFO_V1(ae_work_ack);
PG_FUNCTION_INFO_V1(ae_work_heartbeat);
PG_FUNCTION_INFO_V1(ae_work_stop);
PG_FUNCTION_INFO_V1(ae_work_get);
PG_FUNCTION_INFO_V1(ae_work_list_rows);
PG_FUNCTION_INFO_V1(ae_work_update);
PG_FUNCTION_INFO_V1(ae_work_stats);

static void
set_work_ids(FunctionCallInfo fcinfo, AeCall *call)
{
	call->args[0] = ae_id_arg(fcinfo, 0, "environment_id");
	call->args[1] = ae_id_arg(fcinfo, 1, "work_id");
}

static Datum
work_result(FunctionCallInfo fcinfo, AeCall *call)
{
	Jsonb	   *raw = NULL;
	json_t	   *obj;

	call->raw_out = &raw;
	obj = ae_api_call(call);
	if (obj == NULL)
		PG_RETURN_NULL();
	return HeapTupleGetDatum(ae_work_tuple(ae_result_desc(fcinfo), obj, raw));
}

Datum
ae_work_poll(PG_FUNCTION_ARGS)
{
	AeCall		call = {.endpoint = AE_WORK_POLL};
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	json_t	   *item;
	Jsonb	   *raw = NULL;

	call.args[0] = ae_id_arg(fcinfo, 0, "environment_id");
	call.raw_out = &raw;
	call.query[0].name = "block_ms";
	if (!PG_ARGISNULL(1))
	{
		int			block_ms = PG_GETARG_INT32(1);

		if (block_ms < 1 || block_ms > 999)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("block_ms must be between 1 and 999")));
		call.query[0].value = psprintf("%d", block_ms);
		call.extra_timeout_ms = block_ms;
	}
	call.query[1].name = "reclaim_older_than_ms";
	if (!PG_ARGISNULL(2))
	{
		if (PG_GETARG_INT32(2) < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("reclaim_older_than_ms must not be negative")));
		call.query[1].value = psprintf("%d", PG_GETARG_INT32(2));
	}
	if (!PG_ARGISNULL(3))
	{
		const unsigned char *p;

		call.worker_id = ae_text_arg(fcinfo, 3);
		for (p = (const unsigned char *) call.worker_id; *p; p++)
			if (*p < 0x20 || *p == 0x7f)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid worker_id"),
						 errdetail("It contains a control character.")));
		if (*call.worker_id == '\0')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid worker_id"),
					 errdetail("It is empty.")));
	}

	InitMaterializedSRF(fcinfo, MAT_SRF_BLESS);
	item = ae_api_call(&call);
	if (item != NULL)
		tuplestore_puttuple(rsinfo->setResult,
							ae_work_tuple(rsinfo->setDesc, item, raw));
	return (Datum) 0;
}

static Datum
work_ack_body(FunctionCallInfo fcinfo)
{
	AeCall		call = {.endpoint = AE_WORK_ACK};

	set_work_ids(fcinfo, &call);
	return work_result(fcinfo, &call);
}

Datum
ae_work_ack(PG_FUNCTION_ARGS)
{
	return ae_call_once(fcinfo, work_ack_body);
}

static Datum
work_heartbeat_body(FunctionCallInfo fcinfo)
{
	AeCall		call = {.endpoint = AE_WORK_HEARTBEAT};
	json_t	   *answer;

	set_work_ids(fcinfo, &call);
	/* The SDK's order: desired_ttl_seconds, then expected_last_heartbeat. */
	call.query[0].name = "desired_ttl_seconds";
	if (!PG_ARGISNULL(3))
	{
		if (PG_GETARG_INT32(3) < 1)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("desired_ttl_seconds must be positive")));
		call.query[0].value = psprintf("%d", PG_GETARG_INT32(3));
	}
	call.query[1].name = "expected_last_heartbeat";
	if (!PG_ARGISNULL(2))
		call.query[1].value = ae_text_arg(fcinfo, 2);

	answer = ae_api_call(&call);
	return HeapTupleGetDatum(ae_heartbeat_tuple(ae_result_desc(fcinfo), answer));
}

Datum
ae_work_heartbeat(PG_FUNCTION_ARGS)
{
	return ae_call_once(fcinfo, work_heartbeat_body);
}

static Datum
work_stop_body(FunctionCallInfo fcinfo)
{
	AeCall		call = {.endpoint = AE_WORK_STOP};

	set_work_ids(fcinfo, &call);
	call.stop_force = PG_GETARG_BOOL(2);
	call.body = call.stop_force ? "{\"force\":true}" : "{}";
	return work_result(fcinfo, &call);
}

Datum
ae_work_stop(PG_FUNCTION_ARGS)
{
	return ae_call_once(fcinfo, work_stop_body);
}

static Datum
work_get_body(FunctionCallInfo fcinfo)
{
	AeCall		call = {.endpoint = AE_WORK_GET};

	set_work_ids(fcinfo, &call);
	call.missing_ok = PG_GETARG_BOOL(2);
	return work_result(fcinfo, &call);
}

Datum
ae_work_get(PG_FUNCTION_ARGS)
{
	return ae_call_once(fcinfo, work_get_body);
}

Datum
ae_work_list_rows(PG_FUNCTION_ARGS)
{
	AeCall		call = {.endpoint = AE_WORK_LIST};

	if (SRF_IS_FIRSTCALL())
	{
		int			page_size = PG_GETARG_INT32(1);

		call.args[0] = ae_id_arg(fcinfo, 0, "environment_id");
		ae_check_page_size("page_size", page_size);
		call.query[0].name = "limit";
		call.query[0].value = psprintf("%d", page_size);
	}
	call.query[1].name = "page";
	return ae_list_srf(fcinfo, &call);
}

static Datum
work_update_body(FunctionCallInfo fcinfo)
{
	AeCall		call = {.endpoint = AE_WORK_UPDATE};

	set_work_ids(fcinfo, &call);
	call.body = psprintf("{\"metadata\": %s}",
						 ae_object_body("metadata", PG_GETARG_JSONB_P(2)));
	return work_result(fcinfo, &call);
}

Datum
ae_work_update(PG_FUNCTION_ARGS)
{
	return ae_call_once(fcinfo, work_update_body);
}

static Datum
work_stats_body(FunctionCallInfo fcinfo)
{
	AeCall		call = {.endpoint = AE_WORK_STATS};

	call.args[0] = ae_id_arg(fcinfo, 0, "environment_id");
	return HeapTupleGetDatum(ae_queue_stats_tuple(ae_result_desc(fcinfo),
												  ae_api_call(&call)));
}

Datum
ae_work_stats(PG_FUNCTION_ARGS)
{
	return ae_call_once(fcinfo, work_stats_body);
}
