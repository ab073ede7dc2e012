/*-------------------------------------------------------------------------
 *
 * stats.c
 *		Request statistics per endpoint: recording, the request_stats view's
 *		row source, and reset.
 *
 * With the library preloaded the counters live in shared memory and add
 * up over all backends; otherwise each backend keeps its own.  Each entry
 * has its own spinlock, held for a few stores per call: no LWLock on the
 * request path.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/tuplestore.h"

#include "anthropic_env.h"
#include "endpoints.h"
#include "stats.h"

typedef struct AeStatEntry
{
	slock_t		mutex;
	uint64		calls;
	uint64		errors_4xx;
	uint64		errors_5xx;
	uint64		errors_transport;
	uint64		retries;
	int64		total_us;
	int64		max_us;
	uint64		bytes_sent;
	uint64		bytes_received;
	TimestampTz last_error_at;
	char		last_request_id[64];
} AeStatEntry;

typedef struct AeStatsShared
{
	TimestampTz reset_at;
	AeStatEntry entries[AE_ENDPOINT_COUNT];
} AeStatsShared;

static AeStatsShared *ae_stats = NULL;
static AeStatsShared ae_local_stats;
static bool ae_local_ready = false;

PG_FUNCTION_INFO_V1(ae_request_stats);
PG_FUNCTION_INFO_V1(ae_request_stats_reset);

static void
init_entries(AeStatsShared *s)
{
	int			i;

	memset(s, 0, sizeof(*s));
	s->reset_at = GetCurrentTimestamp();
	for (i = 0; i < AE_ENDPOINT_COUNT; i++)
		SpinLockInit(&s->entries[i].mutex);
}

void
ae_stats_shmem_request(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(AeStatsShared)));
}

void
ae_stats_shmem_startup(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	ae_stats = ShmemInitStruct("anthropic_env request stats", sizeof(AeStatsShared), &found);
	if (!found)
		init_entries(ae_stats);
	LWLockRelease(AddinShmemInitLock);
}

static AeStatsShared *
stats_area(void)
{
	if (ae_stats)
		return ae_stats;
	if (!ae_local_ready)
	{
		init_entries(&ae_local_stats);
		ae_local_ready = true;
	}
	return &ae_local_stats;
}

void
ae_stats_record(int endpoint, long status, int retries, int64 elapsed_us,
				uint64 bytes_sent, uint64 bytes_received, const char *request_id)
{
	AeStatEntry *e;
	TimestampTz now = 0;
	bool		failed = (status == AE_OUTCOME_TRANSPORT || status >= 400);

	if (!ae_track_requests || endpoint < 0 || endpoint >= AE_ENDPOINT_COUNT)
		return;
	if (failed)
		now = GetCurrentTimestamp();
	e = &stats_area()->entries[endpoint];

	SpinLockAcquire(&e->mutex);
	e->calls++;
	if (status == AE_OUTCOME_TRANSPORT)
		e->errors_transport++;
	else if (status >= 500)
		e->errors_5xx++;
	else if (status >= 400)
		e->errors_4xx++;
	e->retries += retries;
	e->total_us += elapsed_us;
	if (elapsed_us > e->max_us)
		e->max_us = elapsed_us;
	e->bytes_sent += bytes_sent;
	e->bytes_received += bytes_received;
	if (failed)
		e->last_error_at = now;
	if (request_id && request_id[0])
		strlcpy(e->last_request_id, request_id, sizeof(e->last_request_id));
	SpinLockRelease(&e->mutex);
}

Datum
ae_request_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	AeStatsShared *s = stats_area();
	int			i;

	InitMaterializedSRF(fcinfo, 0);
	for (i = 0; i < AE_ENDPOINT_COUNT; i++)
	{
		AeStatEntry copy;
		Datum		values[13];
		bool		nulls[13] = {0};

		SpinLockAcquire(&s->entries[i].mutex);
		memcpy(&copy, &s->entries[i], sizeof(copy));
		SpinLockRelease(&s->entries[i].mutex);

		values[0] = CStringGetTextDatum(ae_endpoint_name(i));
		values[1] = Int64GetDatum((int64) copy.calls);
		values[2] = Int64GetDatum((int64) copy.errors_4xx);
		values[3] = Int64GetDatum((int64) copy.errors_5xx);
		values[4] = Int64GetDatum((int64) copy.errors_transport);
		values[5] = Int64GetDatum((int64) copy.retries);
		values[6] = Float8GetDatum(copy.total_us / 1000.0);
		if (copy.calls > 0)
			values[7] = Float8GetDatum(copy.total_us / 1000.0 / copy.calls);
		else
			nulls[7] = true;
		values[8] = Float8GetDatum(copy.max_us / 1000.0);
		values[9] = Int64GetDatum((int64) copy.bytes_sent);
		values[10] = Int64GetDatum((int64) copy.bytes_received);
		if (copy.last_error_at != 0)
			values[11] = TimestampTzGetDatum(copy.last_error_at);
		else
			nulls[11] = true;
		if (copy.last_request_id[0])
			values[12] = CStringGetTextDatum(copy.last_request_id);
		else
			nulls[12] = true;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

Datum
ae_request_stats_reset(PG_FUNCTION_ARGS)
{
	AeStatsShared *s = stats_area();
	int			i;

	for (i = 0; i < AE_ENDPOINT_COUNT; i++)
	{
		AeStatEntry *e = &s->entries[i];

		SpinLockAcquire(&e->mutex);
		e->calls = e->errors_4xx = e->errors_5xx = e->errors_transport = e->retries = 0;
		e->total_us = e->max_us = 0;
		e->bytes_sent = e->bytes_received = 0;
		e->last_error_at = 0;
		e->last_request_id[0] = '\0';
		SpinLockRelease(&e->mutex);
	}
	s->reset_at = GetCurrentTimestamp();
	PG_RETURN_VOID();
}
