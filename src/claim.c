/*-------------------------------------------------------------------------
 *
 * claim.c
 *		SQL functions of the lease keeper: work_claim, work_finish,
 *		work_release, work_should_stop and the rows of the leases view.
 *
 * A claim belongs to the session, not to its transaction: it is made in
 * shared memory at once and lasts until the session finishes or releases
 * the item, or ends (the keeper notices a dead pid and makes the item
 * ready again).  work_finish() is the one transactional step: it writes
 * the finished state into anthropic.held_work inside the caller's
 * transaction, so the commit that keeps the results also makes the finish
 * durable (a restart never offers the item again).  Just before commit the
 * lease is checked once more, and a lost lease raises 40001 there, so the
 * caller's results roll back with it; a lease that passed that check is
 * marked finishing, and the keeper leaves its state alone until the
 * commit or abort has been applied to shared memory.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/condition_variable.h"
#include "storage/lwlock.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"
#include "utils/wait_event.h"

#include "leases.h"

PG_FUNCTION_INFO_V1(ae_work_claim);
PG_FUNCTION_INFO_V1(ae_work_finish);
PG_FUNCTION_INFO_V1(ae_work_release);
PG_FUNCTION_INFO_V1(ae_work_should_stop);
PG_FUNCTION_INFO_V1(ae_leases_rows);

/* work_finish() calls of the open transaction, in TopMemoryContext. */
typedef struct PendingFinish
{
	char		work_id[AE_ID_LEN];
	SubTransactionId subid;
} PendingFinish;

static List *pending_finishes = NIL;
static bool callbacks_registered = false;

/* Wait between two looks at the table while work_claim waits. */
#define AE_CLAIM_RECHECK_MS 200

static char *
id_arg(FunctionCallInfo fcinfo, int argno, const char *argname)
{
	char	   *id;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", argname)));
	id = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	if (*id == '\0' || strlen(id) >= AE_ID_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid %s", argname),
				 errdetail("It must hold 1 to %d bytes.", AE_ID_LEN - 1)));
	return id;
}

static bool
held_by_me(const AeLease *l)
{
	return l != NULL && l->claimed_pid == MyProcPid &&
		(l->state == AE_LEASE_CLAIMED || l->state == AE_LEASE_STOP_REQUESTED);
}

static void
raise_not_held(const char *work_id, const AeLease *l)
{
	ereport(ERROR,
			(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
			 errmsg("the lease of work item \"%s\" is no longer held by this session", work_id),
			 l ? errdetail("The item is %s%s%s.", ae_lease_state_name(l->state),
						   l->error[0] ? ": " : "", l->error)
			 : errdetail("The database holds no such item."),
			 errhint("Roll back; the server gives the item to a worker again.")));
}

/*
 * Runs one statement on the keeper's tables with the latest snapshot, not
 * the caller's: under REPEATABLE READ or SERIALIZABLE the caller's snapshot
 * predates the rows the poller stored and the keeper rewrote while the
 * caller waited or worked, so it would read no secret and its finish would
 * fail to serialize against a beat.  These rows belong to the keeper, not to
 * the caller's view of the data.
 */
static int
spi_latest(const char *sql, int nargs, Oid *argtypes, Datum *values, bool read_only, long tcount)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

	if (plan == NULL)
		elog(ERROR, "could not prepare \"%s\"", sql);
	CommandCounterIncrement();
	return SPI_execute_snapshot(plan, values, NULL, GetLatestSnapshot(), InvalidSnapshot,
								read_only, false, tcount);
}

static bool
is_served(const char *environment_id)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	bool		served;

	values[0] = CStringGetTextDatum(environment_id);
	SPI_connect();
	if (spi_latest("SELECT 1 FROM anthropic.served_environments WHERE environment_id = $1",
				   1, argtypes, values, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read anthropic.served_environments");
	served = SPI_processed == 1;
	SPI_finish();
	return served;
}

/* Takes the oldest ready item of the environment for this session. */
static bool
try_claim(const char *environment_id, const char *consumer, AeLease *copy)
{
	AeLease    *best = NULL;
	int			i;

	LWLockAcquire(ae_leases->lock, LW_EXCLUSIVE);
	for (i = 0; i < AE_MAX_LEASES; i++)
	{
		AeLease    *l = &ae_leases->leases[i];

		/* No heartbeat yet: its NO_HEARTBEAT claim is not confirmed. */
		/* Read back after a restart: not offered until a beat is answered. */
		if (l->state == AE_LEASE_READY && !l->healthcheck && l->last_heartbeat[0] != '\0' && !l->resumed &&
			strcmp(l->environment_id, environment_id) == 0 &&
			(best == NULL || l->taken_at < best->taken_at))
			best = l;
	}
	if (best)
	{
		best->state = AE_LEASE_CLAIMED;
		best->claimed_pid = MyProcPid;
		best->claimed_at = GetCurrentTimestamp();
		ae_lease_strcpy(best->consumer, consumer ? consumer : "", sizeof(best->consumer));
		best->dirty = true;
		*copy = *best;
	}
	LWLockRelease(ae_leases->lock);
	return best != NULL;
}

static void
set_waiting(const char *environment_id, bool waiting)
{
	int			i;
	int			free_slot = -1;

	LWLockAcquire(ae_leases->lock, LW_EXCLUSIVE);
	for (i = 0; i < AE_MAX_WAITERS; i++)
	{
		AeWaiter   *w = &ae_leases->waiters[i];

		if (w->pid == MyProcPid)
		{
			if (!waiting)
				w->pid = 0;
			LWLockRelease(ae_leases->lock);
			return;
		}
		if (w->pid == 0 && free_slot < 0)
			free_slot = i;
	}
	if (waiting && free_slot >= 0)
	{
		ae_leases->waiters[free_slot].pid = MyProcPid;
		strlcpy(ae_leases->waiters[free_slot].environment_id, environment_id, AE_ID_LEN);
	}
	LWLockRelease(ae_leases->lock);
	/* Unregistered, the poller would never poll for this session. */
	if (waiting && free_slot < 0)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many sessions wait in anthropic.work_claim()"),
				 errdetail("At most %d sessions can wait at once.", AE_MAX_WAITERS),
				 errhint("Call work_claim() with wait => '0', or use fewer waiting sessions.")));
}

/* Hands a claim back after an error between claiming and returning it. */
static void
unclaim(const char *work_id)
{
	AeLease    *l;

	LWLockAcquire(ae_leases->lock, LW_EXCLUSIVE);
	l = ae_lease_find(work_id);
	if (l && l->claimed_pid == MyProcPid && l->state == AE_LEASE_CLAIMED)
	{
		l->state = AE_LEASE_READY;
		l->claimed_pid = 0;
		l->notify = true;
		l->dirty = true;
	}
	LWLockRelease(ae_leases->lock);
	ConditionVariableBroadcast(&ae_leases->ready_cv);
	ae_leases_wake_keeper();
}

static void
emit_claim(ReturnSetInfo *rsinfo, const AeLease *l)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1];
	Datum		values[8];
	bool		nulls[8] = {0};

	args[0] = CStringGetTextDatum(l->work_id);
	SPI_connect();
	if (spi_latest("SELECT h.metadata, s.secret FROM anthropic.held_work h "
				   "LEFT JOIN anthropic.work_secrets s USING (work_id) WHERE h.work_id = $1",
				   1, argtypes, args, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read anthropic.held_work");
	values[0] = CStringGetTextDatum(l->work_id);
	values[1] = CStringGetTextDatum(l->environment_id);
	values[2] = CStringGetTextDatum(l->data_type);
	values[3] = CStringGetTextDatum(l->data_id);
	nulls[4] = nulls[5] = true;
	if (SPI_processed == 1)
	{
		bool		isnull;
		Datum		d;

		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (!isnull)
		{
			values[4] = SPI_datumTransfer(d, false, -1);
			nulls[4] = false;
		}
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
		if (!isnull)
		{
			values[5] = SPI_datumTransfer(d, false, -1);
			nulls[5] = false;
		}
	}
	SPI_finish();
	values[6] = TimestampTzGetDatum(l->claimed_at);
	values[7] = TimestampTzGetDatum(l->lease_expires_at);
	nulls[7] = l->lease_expires_at == 0;
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

Datum
ae_work_claim(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *environment_id = id_arg(fcinfo, 0, "environment_id");
	Interval   *wait;
	char	   *consumer = NULL;
	int64		wait_ms;
	TimestampTz deadline;
	AeLease		got;
	volatile bool found = false;

	ae_leases_require();
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("wait must not be null")));
	wait = PG_GETARG_INTERVAL_P(1);
	wait_ms = wait->time / 1000 + (int64) wait->day * 86400000 +
		(int64) wait->month * 30 * 86400000;
	if (wait_ms < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("wait must not be negative")));
	if (!PG_ARGISNULL(2))
	{
		consumer = text_to_cstring(PG_GETARG_TEXT_PP(2));
		if (strlen(consumer) >= sizeof(((AeLease *) NULL)->consumer))
			ereport(ERROR,
					(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
					 errmsg("consumer is too long"),
					 errdetail("It must hold at most %d bytes.",
							   (int) sizeof(((AeLease *) NULL)->consumer) - 1)));
	}
	if (!is_served(environment_id))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("environment \"%s\" is not served by this database", environment_id),
				 errhint("Call anthropic.serve('%s') first.", environment_id)));

	InitMaterializedSRF(fcinfo, MAT_SRF_BLESS);
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), Min(wait_ms, (int64) 7 * 86400000));

	PG_TRY();
	{
		bool		registered = false;

		for (;;)
		{
			long		left;

			if (try_claim(environment_id, consumer, &got))
			{
				found = true;
				break;
			}
			left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
			if (left <= 0)
				break;
			if (!registered)
			{
				/* The poller polls for an environment only while someone waits. */
				set_waiting(environment_id, true);
				registered = true;
				ae_leases_wake_poller();
			}
			(void) ConditionVariableTimedSleep(&ae_leases->ready_cv,
											   Min(left, AE_CLAIM_RECHECK_MS),
											   PG_WAIT_EXTENSION);
		}
	}
	PG_FINALLY();
	{
		ConditionVariableCancelSleep();
		set_waiting(environment_id, false);
	}
	PG_END_TRY();

	if (found)
	{
		PG_TRY();
		{
			emit_claim(rsinfo, &got);
		}
		PG_CATCH();
		{
			unclaim(got.work_id);
			PG_RE_THROW();
		}
		PG_END_TRY();
	}
	return (Datum) 0;
}

static void
finish_xact_callback(XactEvent event, void *arg)
{
	ListCell   *lc;

	if (pending_finishes == NIL)
		return;
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PARALLEL_PRE_COMMIT:
			/* The last moment a lost lease can still roll the results back. */
			foreach(lc, pending_finishes)
			{
				PendingFinish *pf = lfirst(lc);
				AeLease    *l;
				AeLease		copy;
				bool		held;

				/*
				 * Past this check the finish counts: the keeper must not
				 * turn the item lost or stop_requested before COMMIT is
				 * applied below, or the committed finish would be dropped.
				 */
				LWLockAcquire(ae_leases->lock, LW_EXCLUSIVE);
				l = ae_lease_find(pf->work_id);
				held = held_by_me(l);
				if (held)
					l->finishing_pid = MyProcPid;
				if (l)
					copy = *l;
				LWLockRelease(ae_leases->lock);
				if (!held)
					raise_not_held(pf->work_id, l ? &copy : NULL);
			}
			break;
		case XACT_EVENT_PRE_PREPARE:
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot prepare a transaction that called anthropic.work_finish()")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			LWLockAcquire(ae_leases->lock, LW_EXCLUSIVE);
			foreach(lc, pending_finishes)
			{
				PendingFinish *pf = lfirst(lc);
				AeLease    *l = ae_lease_find(pf->work_id);

				if (l && l->claimed_pid == MyProcPid && l->finishing_pid == MyProcPid)
				{
					l->state = AE_LEASE_FINISHED;
					l->finishing_pid = 0;
					l->claimed_pid = 0;
					l->next_beat_at = 0;	/* the stop goes out at once */
					l->done_at = GetCurrentTimestamp();
					l->dirty = true;
				}
			}
			LWLockRelease(ae_leases->lock);
			ae_leases_wake_keeper();
			list_free_deep(pending_finishes);
			pending_finishes = NIL;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			LWLockAcquire(ae_leases->lock, LW_EXCLUSIVE);
			foreach(lc, pending_finishes)
			{
				PendingFinish *pf = lfirst(lc);
				AeLease    *l = ae_lease_find(pf->work_id);

				if (l && l->finishing_pid == MyProcPid)
					l->finishing_pid = 0;
			}
			LWLockRelease(ae_leases->lock);
			list_free_deep(pending_finishes);
			pending_finishes = NIL;
			break;
		default:
			break;
	}
}

static void
finish_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	ListCell   *lc;

	foreach(lc, pending_finishes)
	{
		PendingFinish *pf = lfirst(lc);

		if (pf->subid != mySubid)
			continue;
		if (event == SUBXACT_EVENT_COMMIT_SUB)
			pf->subid = parentSubid;
		else if (event == SUBXACT_EVENT_ABORT_SUB)
		{
			pending_finishes = foreach_delete_current(pending_finishes, lc);
			pfree(pf);
		}
	}
}

/*
 * Writes the finished state in the caller's transaction, into a table of
 * its own: committed, it survives any restart; rolled back, it goes with
 * the results.  A session never locks the keeper's held_work rows, so a
 * transaction left open after work_finish() holds back no beat's record.
 */
static void
record_finished(const char *work_id)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];

	values[0] = CStringGetTextDatum(work_id);
	SPI_connect();
	if (spi_latest("INSERT INTO anthropic.finished_work (work_id) VALUES ($1) "
				   "ON CONFLICT (work_id) DO NOTHING",
				   1, argtypes, values, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not insert into anthropic.finished_work");
	SPI_finish();
}

Datum
ae_work_finish(PG_FUNCTION_ARGS)
{
	char	   *work_id = id_arg(fcinfo, 0, "work_id");
	AeLease    *l;
	AeLease		copy;
	bool		held;
	ListCell   *lc;
	PendingFinish *pf;

	ae_leases_require();
	LWLockAcquire(ae_leases->lock, LW_SHARED);
	l = ae_lease_find(work_id);
	held = held_by_me(l);
	if (l)
		copy = *l;
	LWLockRelease(ae_leases->lock);
	if (!held)
		raise_not_held(work_id, l ? &copy : NULL);

	if (!callbacks_registered)
	{
		RegisterXactCallback(finish_xact_callback, NULL);
		RegisterSubXactCallback(finish_subxact_callback, NULL);
		callbacks_registered = true;
	}
	foreach(lc, pending_finishes)
		if (strcmp(((PendingFinish *) lfirst(lc))->work_id, work_id) == 0)
			PG_RETURN_VOID();
	record_finished(work_id);
	pf = MemoryContextAllocZero(TopMemoryContext, sizeof(PendingFinish));
	strlcpy(pf->work_id, work_id, sizeof(pf->work_id));
	pf->subid = GetCurrentSubTransactionId();
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		pending_finishes = lappend(pending_finishes, pf);
		MemoryContextSwitchTo(old);
	}
	PG_RETURN_VOID();
}

Datum
ae_work_release(PG_FUNCTION_ARGS)
{
	char	   *work_id = id_arg(fcinfo, 0, "work_id");
	AeLease    *l;
	bool		mine;
	bool		ready = false;

	ae_leases_require();
	LWLockAcquire(ae_leases->lock, LW_EXCLUSIVE);
	l = ae_lease_find(work_id);
	mine = l != NULL && l->claimed_pid == MyProcPid;
	if (mine)
	{
		/* stop_requested stays so: the keeper now stops it. */
		if (l->state == AE_LEASE_CLAIMED)
		{
			l->state = AE_LEASE_READY;
			l->notify = true;
			ready = true;
		}
		l->claimed_pid = 0;
		l->next_beat_at = 0;
		l->dirty = true;
	}
	LWLockRelease(ae_leases->lock);
	if (!mine)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("work item \"%s\" is not claimed by this session", work_id)));
	if (ready)
		ConditionVariableBroadcast(&ae_leases->ready_cv);
	ae_leases_wake_keeper();
	PG_RETURN_VOID();
}

Datum
ae_work_should_stop(PG_FUNCTION_ARGS)
{
	char	   *work_id = id_arg(fcinfo, 0, "work_id");
	AeLease    *l;
	bool		stop;

	ae_leases_require();
	LWLockAcquire(ae_leases->lock, LW_SHARED);
	l = ae_lease_find(work_id);
	stop = l == NULL || l->state == AE_LEASE_STOP_REQUESTED ||
		l->state == AE_LEASE_LOST || l->state == AE_LEASE_FINISHED;
	LWLockRelease(ae_leases->lock);
	PG_RETURN_BOOL(stop);
}

static Datum
time_or_null(TimestampTz t, bool *isnull)
{
	*isnull = (t == 0);
	return TimestampTzGetDatum(t);
}

Datum
ae_leases_rows(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	AeLease    *copy;
	int			n = 0;
	int			i;

	InitMaterializedSRF(fcinfo, MAT_SRF_BLESS);
	if (ae_leases == NULL)
		return (Datum) 0;
	copy = palloc(sizeof(AeLease) * AE_MAX_LEASES);
	LWLockAcquire(ae_leases->lock, LW_SHARED);
	for (i = 0; i < AE_MAX_LEASES; i++)
		if (ae_leases->leases[i].state != AE_LEASE_FREE)
			copy[n++] = ae_leases->leases[i];
	LWLockRelease(ae_leases->lock);

	for (i = 0; i < n; i++)
	{
		AeLease    *l = &copy[i];
		Datum		values[14];
		bool		nulls[14] = {0};

		values[0] = CStringGetTextDatum(l->work_id);
		values[1] = CStringGetTextDatum(l->environment_id);
		values[2] = CStringGetTextDatum(l->data_type);
		values[3] = CStringGetTextDatum(l->data_id);
		values[4] = CStringGetTextDatum(ae_lease_state_name(l->state));
		values[5] = CStringGetTextDatum(l->consumer);
		nulls[5] = l->consumer[0] == '\0';
		values[6] = Int32GetDatum(l->claimed_pid);
		nulls[6] = l->claimed_pid == 0;
		values[7] = time_or_null(l->taken_at, &nulls[7]);
		values[8] = time_or_null(l->claimed_at, &nulls[8]);
		values[9] = time_or_null(l->last_beat_at, &nulls[9]);
		values[10] = time_or_null(l->lease_expires_at, &nulls[10]);
		values[11] = CStringGetTextDatum(l->remote_state);
		nulls[11] = l->remote_state[0] == '\0';
		values[12] = time_or_null(l->stop_sent_at, &nulls[12]);
		values[13] = CStringGetTextDatum(l->error);
		nulls[13] = l->error[0] == '\0';
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
