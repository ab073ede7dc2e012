/*-------------------------------------------------------------------------
 *
 * worker.c
 *		The sync background worker: registration, shared state, main loop,
 *		sync_now() and the state behind the sync_status view.
 *
 * The worker runs "SELECT anthropic.sync(raise_on_error => false)" in a
 * transaction of its own at start and then every anthropic.sync_interval,
 * sleeping on its latch in between.  sync_now() sets a flag in shared
 * memory and the worker's latch.  While runs fail it backs off
 * exponentially, capped at the interval, keeping the last good mirror.
 * It never waits for the lock that serializes syncs: when another session
 * holds it (a manual sync(), perhaps left idle in its transaction), the
 * run is skipped with a LOG line and tried again soon, so the worker keeps
 * answering SIGHUP, SIGTERM and sync_now() meanwhile.
 * It starts only once recovery has finished, so a hot standby runs no
 * sync.  The shared state holds the worker's pid and PGPROC number, never
 * a process-local pointer.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "anthropic_env.h"
#include "worker.h"

/* First retry after a failed run; doubled per failure up to the interval. */
#define AE_BACKOFF_BASE_MS 5000L

/* First retry after a run skipped for the lock; doubled up to the cap. */
#define AE_BUSY_BASE_MS 1000L
#define AE_BUSY_MAX_MS 30000L

/* How one run of the worker ended. */
typedef enum AeSyncOutcome
{
	AE_SYNC_OK,
	AE_SYNC_FAILED,
	AE_SYNC_BUSY				/* another session holds the sync lock */
} AeSyncOutcome;

typedef struct AeSyncShared
{
	slock_t		mutex;
	pid_t		pid;			/* 0 when no worker runs */
	int			procno;			/* the worker's PGPROC number, -1 if none */
	bool		run_now;		/* set by sync_now() */
	TimestampTz next_run;
	TimestampTz last_wakeup;
	int			failures;		/* failed runs in a row */
} AeSyncShared;

static AeSyncShared *ae_sync_shared = NULL;

PGDLLEXPORT void ae_sync_worker_main(Datum arg);

PG_FUNCTION_INFO_V1(ae_sync_now);
PG_FUNCTION_INFO_V1(ae_sync_worker_state);

void
ae_worker_shmem_request(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(AeSyncShared)));
}

void
ae_worker_shmem_startup(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	ae_sync_shared = ShmemInitStruct("anthropic_env sync worker",
									 sizeof(AeSyncShared), &found);
	if (!found)
	{
		memset(ae_sync_shared, 0, sizeof(AeSyncShared));
		SpinLockInit(&ae_sync_shared->mutex);
		ae_sync_shared->procno = -1;
	}
	LWLockRelease(AddinShmemInitLock);
}

void
ae_worker_register(void)
{
	BackgroundWorker worker;

	if (ae_sync_database == NULL || ae_sync_database[0] == '\0')
		return;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	/* Never on a hot standby: start once recovery has finished. */
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "anthropic_env");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "ae_sync_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "anthropic_env sync worker");
	snprintf(worker.bgw_type, BGW_MAXLEN, "anthropic_env sync");
	RegisterBackgroundWorker(&worker);
}

static void
worker_detach(int code, Datum arg)
{
	SpinLockAcquire(&ae_sync_shared->mutex);
	ae_sync_shared->pid = 0;
	ae_sync_shared->procno = -1;
	SpinLockRelease(&ae_sync_shared->mutex);
}

/*
 * Runs one sync in its own transaction.  The lock sync() takes is tried
 * first, without waiting; sync() then finds it held by its own transaction.
 * An error is logged at WARNING and leaves no transaction behind.
 */
static AeSyncOutcome
run_sync_once(void)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	volatile AeSyncOutcome outcome = AE_SYNC_FAILED;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PG_TRY();
	{
		int			rc;
		bool		isnull;

		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, "SELECT anthropic.sync(raise_on_error => false)");
		/* The same key as sync()'s pg_advisory_xact_lock. */
		rc = SPI_execute("SELECT pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtext('anthropic.sync'))",
						 false, 1);
		if (rc != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "unexpected result from pg_try_advisory_xact_lock(): %d", rc);
		if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) ||
			isnull)
			outcome = AE_SYNC_BUSY;
		else
		{
			rc = SPI_execute("SELECT status, error FROM anthropic.sync(raise_on_error => false)",
							 false, 1);
			if (rc != SPI_OK_SELECT || SPI_processed != 1)
				elog(ERROR, "unexpected result from anthropic.sync(): %d", rc);
			else
			{
				char	   *status = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
				char	   *error = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);

				outcome = (status && strcmp(status, "ok") == 0) ? AE_SYNC_OK : AE_SYNC_FAILED;
				if (outcome != AE_SYNC_OK)
					ereport(WARNING,
							(errmsg("anthropic_env sync failed: %s", error ? error : "unknown error"),
							 errhint("The mirror keeps its last good data; the worker retries with backoff.")));
			}
		}
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		ereport(WARNING,
				(errmsg("anthropic_env sync failed: %s", edata->message),
				 edata->detail ? errdetail_internal("%s", edata->detail) : 0,
				 errhint("Is the anthropic_env extension installed in database \"%s\"?",
						 ae_sync_database)));
		FreeErrorData(edata);
		outcome = AE_SYNC_FAILED;
	}
	PG_END_TRY();

	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	return outcome;
}

void
ae_sync_worker_main(Datum arg)
{
	TimestampTz last_start = 0;
	int			failures = 0;
	int			skips = 0;		/* runs skipped for the lock in a row */

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnection(ae_sync_database, NULL, 0);
	pgstat_report_appname("anthropic_env sync worker");

	SpinLockAcquire(&ae_sync_shared->mutex);
	ae_sync_shared->pid = MyProcPid;
#if PG_VERSION_NUM >= 170000
	ae_sync_shared->procno = MyProcNumber;
#else
	ae_sync_shared->procno = MyProc->pgprocno;
#endif
	ae_sync_shared->next_run = GetCurrentTimestamp();
	SpinLockRelease(&ae_sync_shared->mutex);
	before_shmem_exit(worker_detach, (Datum) 0);

	ereport(LOG,
			(errmsg("anthropic_env sync worker started for database \"%s\"", ae_sync_database)));

	for (;;)
	{
		TimestampTz now;
		TimestampTz next;
		bool		run_now;
		long		wait_ms;

		CHECK_FOR_INTERRUPTS();

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			/* A new interval counts from the start of the last run. */
			if (last_start != 0)
			{
				TimestampTz candidate = TimestampTzPlusMilliseconds(last_start,
																	(int64) ae_sync_interval_s * 1000);

				SpinLockAcquire(&ae_sync_shared->mutex);
				/* A retry after a skipped or failed run is never pushed back. */
				if ((failures == 0 && skips == 0) || candidate < ae_sync_shared->next_run)
					ae_sync_shared->next_run = candidate;
				SpinLockRelease(&ae_sync_shared->mutex);
			}
		}

		now = GetCurrentTimestamp();
		SpinLockAcquire(&ae_sync_shared->mutex);
		run_now = ae_sync_shared->run_now;
		ae_sync_shared->run_now = false;
		next = ae_sync_shared->next_run;
		SpinLockRelease(&ae_sync_shared->mutex);

		if ((run_now || now >= next) && !RecoveryInProgress())
		{
			long		delay_ms;

			last_start = now;
			SpinLockAcquire(&ae_sync_shared->mutex);
			ae_sync_shared->last_wakeup = now;
			SpinLockRelease(&ae_sync_shared->mutex);

			switch (run_sync_once())
			{
				case AE_SYNC_OK:
					failures = 0;
					skips = 0;
					delay_ms = (long) ae_sync_interval_s * 1000;
					break;
				case AE_SYNC_BUSY:
					skips++;
					delay_ms = AE_BUSY_BASE_MS << Min(skips - 1, 20);
					delay_ms = Min(delay_ms, AE_BUSY_MAX_MS);
					delay_ms = Min(delay_ms, (long) ae_sync_interval_s * 1000);
					ereport(LOG,
							(errmsg("anthropic_env sync worker skipped a run: another session holds the sync lock"),
							 errdetail("A manual anthropic.sync() is running or its transaction is still open; the worker tries again in %ld ms.",
									   delay_ms)));
					break;
				default:
					failures++;
					skips = 0;
					delay_ms = AE_BACKOFF_BASE_MS << Min(failures - 1, 20);
					delay_ms = Min(delay_ms, (long) ae_sync_interval_s * 1000);
					break;
			}
			SpinLockAcquire(&ae_sync_shared->mutex);
			ae_sync_shared->failures = failures;
			ae_sync_shared->next_run = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), delay_ms);
			SpinLockRelease(&ae_sync_shared->mutex);
			continue;
		}

		wait_ms = TimestampDifferenceMilliseconds(now, next);
		if (RecoveryInProgress())
			wait_ms = (long) ae_sync_interval_s * 1000;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(wait_ms, 1), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

Datum
ae_sync_now(PG_FUNCTION_ARGS)
{
	int			procno;

	if (ae_sync_shared == NULL)
		PG_RETURN_BOOL(false);
	SpinLockAcquire(&ae_sync_shared->mutex);
	procno = ae_sync_shared->procno;
	if (procno >= 0)
		ae_sync_shared->run_now = true;
	SpinLockRelease(&ae_sync_shared->mutex);
	if (procno < 0)
	{
		ereport(NOTICE,
				(errmsg("the anthropic_env sync worker is not running"),
				 errhint("Set anthropic.sync_database and preload anthropic_env, or call anthropic.sync().")));
		PG_RETURN_BOOL(false);
	}
	SetLatch(&ProcGlobal->allProcs[procno].procLatch);
	PG_RETURN_BOOL(true);
}

Datum
ae_sync_worker_state(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	Datum		values[4];
	bool		nulls[4] = {true, true, true, true};

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	desc = BlessTupleDesc(desc);

	if (ae_sync_shared != NULL)
	{
		SpinLockAcquire(&ae_sync_shared->mutex);
		if (ae_sync_shared->pid != 0)
		{
			values[0] = Int32GetDatum(ae_sync_shared->pid);
			values[1] = TimestampTzGetDatum(ae_sync_shared->next_run);
			values[3] = Int32GetDatum(ae_sync_shared->failures);
			nulls[0] = nulls[1] = nulls[3] = false;
			if (ae_sync_shared->last_wakeup != 0)
			{
				values[2] = TimestampTzGetDatum(ae_sync_shared->last_wakeup);
				nulls[2] = false;
			}
		}
		SpinLockRelease(&ae_sync_shared->mutex);
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}
