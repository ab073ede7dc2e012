/*-------------------------------------------------------------------------
 *
 * keeper.c
 *		The lease keeper: two background workers in anthropic.sync_database
 *		that make the database a self-hosted environment worker.
 *
 * - The poller polls a served environment only while a session waits in
 *   work_claim() for it or it holds fewer ready items than its prefetch
 *   (block_ms=999, with the worker id), acks what it gets, claims the
 *   lease with expected_last_heartbeat=NO_HEARTBEAT, stores the item (its
 *   secret in the UNLOGGED anthropic.work_secrets) and marks it ready.
 * - The keeper beats every held item at max(1 s, min(ttl/2, 30 s)),
 *   echoing last_heartbeat verbatim, all due beats of a round at once
 *   through the libcurl multi interface (ae_api_call_each).  Each attempt
 *   is capped well below one interval and not retried within the round, so
 *   no beat holds the others; the keeper sends a failed beat again and
 *   reconciles the 412 that may follow its own unanswered beat.  It
 *   notices dead sessions (from inside a round's waits too, so that a slow
 *   round holds no dead session's item), lost leases and stop requests,
 *   sends the force
 *   stops, writes the table anthropic.held_work that a restart reads back
 *   (with anthropic.finished_work, which work_finish() writes), and sends
 *   every NOTIFY anthropic_work.
 *
 * They are two processes because a long poll lasts up to a second, and a
 * beat must never wait for one (nor for a sync, which has a worker of its
 * own).  Both start only once recovery has finished, so a standby runs
 * neither.  SIGTERM ends the poller at its next interrupt check (every
 * 20 ms while a request is in flight); the keeper then sends one last wave
 * of beats (keeper_stop), so that a restart shorter than the TTL finds its
 * leases running.  Nothing is stopped on the way out, so a restart resumes
 * the same leases.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "anthropic_env.h"
#include "api.h"
#include "convert.h"
#include "keeper.h"
#include "leases.h"
#include "retry.h"

PGDLLEXPORT void ae_keeper_main(Datum arg);

#define ROLE_KEEPER 0
#define ROLE_POLLER 1

#define AE_MAX_SERVED 256
#define AE_KEEPER_TICK_MS 250
#define AE_TERMINAL_KEEP_MS (10 * 60 * 1000)
#define AE_POLL_BACKOFF_MAX_MS 60000
#define AE_BEAT_ATTEMPT_MIN_MS 500
#define AE_BEAT_ATTEMPT_MAX_MS 1000
#define AE_LAST_ROUND_MS 500

typedef struct Served
{
	char		environment_id[AE_ID_LEN];
	int			prefetch;
	char		worker_id[AE_ID_LEN];
	int			failures;
	TimestampTz backoff_until;
} Served;

static Served served[AE_MAX_SERVED];
static int	nserved = 0;
static bool told_full = false;	/* the poller logged that the table is full */
static bool told_served = false;	/* it logged more served environments than it serves */

/*
 * The keeper's beats in flight, so that a SIGTERM meeting them records them
 * as unanswered on the way out: the server may apply them after we are gone.
 * Their outcomes tell which had begun; one still connecting cannot have
 * reached the server.
 */
static struct Act *inflight = NULL;
static AeCallOutcome *inflight_out = NULL;
static int	ninflight = 0;
static bool claims_confirmed = false;	/* a round confirmed a NO_HEARTBEAT claim */

/* Set by SIGTERM in the keeper; see keeper_sigterm(). */
static volatile sig_atomic_t keeper_stopping = false;
static bool stop_flushed = false;	/* keeper_stop() made its last write */

void
ae_keeper_register(void)
{
	BackgroundWorker worker;
	int			role;

	if (ae_sync_database == NULL || ae_sync_database[0] == '\0')
		return;
	for (role = ROLE_KEEPER; role <= ROLE_POLLER; role++)
	{
		memset(&worker, 0, sizeof(worker));
		worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
		worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
		worker.bgw_restart_time = 1;
		worker.bgw_main_arg = Int32GetDatum(role);
		snprintf(worker.bgw_library_name, BGW_MAXLEN, "anthropic_env");
		snprintf(worker.bgw_function_name, BGW_MAXLEN, "ae_keeper_main");
		snprintf(worker.bgw_name, BGW_MAXLEN, role == ROLE_KEEPER ?
				 "anthropic_env lease keeper" : "anthropic_env work poller");
		snprintf(worker.bgw_type, BGW_MAXLEN, role == ROLE_KEEPER ?
				 "anthropic_env keeper" : "anthropic_env poller");
		RegisterBackgroundWorker(&worker);
	}
}

static int
my_procno(void)
{
#if PG_VERSION_NUM >= 170000
	return MyProcNumber;
#else
	return MyProc->pgprocno;
#endif
}

static Datum
text_datum(const char *s)
{
	size_t		len = strlen(s);
	text	   *t = palloc(VARHDRSZ + len);

	SET_VARSIZE(t, VARHDRSZ + len);
	memcpy(VARDATA(t), s, len);
	return PointerGetDatum(t);
}

static void
detach(int code, Datum arg)
{
	int			role = DatumGetInt32(arg);

	if (ae_leases == NULL)
		return;
	LWLockAcquire(ae_leases->lock, LW_EXCLUSIVE);
	if (role == ROLE_KEEPER)
	{
		ae_leases->keeper_procno = -1;
		ae_leases->keeper_pid = 0;
	}
	else
		ae_leases->poller_procno = -1;
	LWLockRelease(ae_leases->lock);
}

static void
begin_xact(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
}

static void
end_xact(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
}

/*
 * Runs fn in a transaction of its own; an error is logged at WARNING and
 * leaves no transaction behind.  Returns whether it committed.
 */
static bool
in_xact(void (*fn) (void *), void *arg, const char *what)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool ok = true;

	PG_TRY();
	{
		begin_xact();
		fn(arg);
		end_xact();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		/* A write that SIGTERM cut short is made again on the way out. */
		if (!(keeper_stopping && edata->sqlerrcode == ERRCODE_QUERY_CANCELED))
			ereport(WARNING,
					(errmsg("anthropic_env lease keeper could not %s: %s", what, edata->message)));
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	return ok;
}

static void
check_extension(void *arg)
{
	bool	   *present = arg;

	if (SPI_execute("SELECT 1 FROM pg_extension WHERE extname = 'anthropic_env' "
					"AND to_regclass('anthropic.held_work') IS NOT NULL", true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read pg_extension");
	*present = SPI_processed == 1;
}

static void
read_served(void *arg)
{
	int			i;
	Served		old[AE_MAX_SERVED];
	int			nold = nserved;

	memcpy(old, served, sizeof(Served) * nserved);
	if (SPI_execute("SELECT environment_id, prefetch, worker_id FROM anthropic.served_environments "
					"ORDER BY environment_id", true, AE_MAX_SERVED + 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read anthropic.served_environments");
	/* serve() refuses more; rows written around it are named once. */
	if (SPI_processed > AE_MAX_SERVED && !told_served)
		ereport(WARNING,
				(errmsg("anthropic.served_environments has more than %d rows: the work poller serves only the first %d",
						AE_MAX_SERVED, AE_MAX_SERVED)));
	told_served = SPI_processed > AE_MAX_SERVED;
	nserved = 0;
	for (i = 0; i < (int) Min(SPI_processed, AE_MAX_SERVED); i++)
	{
		Served	   *s = &served[nserved];
		char	   *id = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		char	   *prefetch = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
		char	   *wid = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3);
		int			j;

		memset(s, 0, sizeof(*s));
		strlcpy(s->environment_id, id, AE_ID_LEN);
		s->prefetch = atoi(prefetch);
		if (wid)
			strlcpy(s->worker_id, wid, AE_ID_LEN);
		else
			snprintf(s->worker_id, AE_ID_LEN, "anthropic_env/%s", ae_sync_database);
		/* Backoff survives a reread. */
		for (j = 0; j < nold; j++)
			if (strcmp(old[j].environment_id, s->environment_id) == 0)
			{
				s->failures = old[j].failures;
				s->backoff_until = old[j].backoff_until;
			}
		nserved++;
	}
}

static int
beat_interval_ms(int ttl_seconds)
{
	int			half = ttl_seconds * 500;

	return Max(1000, Min(half, 30000));
}

static AeLease *
free_slot(void)
{
	int			i;

	for (i = 0; i < AE_MAX_LEASES; i++)
		if (ae_leases->leases[i].state == AE_LEASE_FREE)
			return &ae_leases->leases[i];
	return NULL;
}

/* ---------------------------------------------------------------- restart */

static const char *
col(int row, int c)
{
	return SPI_getvalue(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, c);
}

static TimestampTz
col_time(int row, int c)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, c, &isnull);

	return isnull ? 0 : DatumGetTimestampTz(d);
}

static void
strlcpy_or_empty(char *dst, const char *src, size_t n)
{
	ae_lease_strcpy(dst, src ? src : "", n);
}

/*
 * Reads held_work back after the server started.  No session survives a
 * restart, so claimed items are ready again; an item whose secret is gone
 * (the UNLOGGED table is emptied by crash recovery) can no longer be
 * worked on and is released: shown lost, never beaten again.
 */
static void
load_held(void *arg)
{
	int			i;
	TimestampTz now = GetCurrentTimestamp();

	if (SPI_execute("SELECT h.work_id, h.environment_id, h.data_type, h.data_id, h.state, h.consumer, "
					"h.taken_at, h.last_beat_at, h.lease_expires_at, h.last_heartbeat, h.ttl_seconds, "
					"h.remote_state, h.stop_sent_at, h.done_at, h.error, h.healthcheck, "
					"s.work_id IS NOT NULL, h.beat_unanswered, f.finished_at, h.ack_unanswered, "
					"h.beat_unanswered_at "
					"FROM anthropic.held_work h LEFT JOIN anthropic.work_secrets s USING (work_id) "
					"LEFT JOIN anthropic.finished_work f USING (work_id) "
					"ORDER BY h.taken_at", false, AE_MAX_LEASES) != SPI_OK_SELECT)
		elog(ERROR, "could not read anthropic.held_work");

	LWLockAcquire(ae_leases->lock, LW_EXCLUSIVE);
	for (i = 0; i < (int) SPI_processed; i++)
	{
		AeLease    *l = free_slot();
		const char *state = col(i, 5);

		if (l == NULL)
			break;
		memset(l, 0, sizeof(*l));
		strlcpy(l->work_id, col(i, 1), AE_ID_LEN);
		strlcpy(l->environment_id, col(i, 2), AE_ID_LEN);
		strlcpy_or_empty(l->data_type, col(i, 3), sizeof(l->data_type));
		strlcpy_or_empty(l->data_id, col(i, 4), AE_ID_LEN);
		strlcpy_or_empty(l->consumer, col(i, 6), sizeof(l->consumer));
		l->taken_at = col_time(i, 7);
		l->last_beat_at = col_time(i, 8);
		l->lease_expires_at = col_time(i, 9);
		strlcpy_or_empty(l->last_heartbeat, col(i, 10), AE_HB_LEN);
		l->ttl_seconds = col(i, 11) ? atoi(col(i, 11)) : 120;
		strlcpy_or_empty(l->remote_state, col(i, 12), sizeof(l->remote_state));
		l->stop_sent_at = col_time(i, 13);
		l->done_at = col_time(i, 14);
		strlcpy_or_empty(l->error, col(i, 15), sizeof(l->error));
		l->healthcheck = col(i, 16) && strcmp(col(i, 16), "t") == 0;
		l->next_beat_at = now;
		l->dirty = true;

		/*
		 * A beat that went unanswered before the restart may have been
		 * applied, and so may a NO_HEARTBEAT claim that was never confirmed
		 * (no stored heartbeat): the next beat's 412 showing the lease that
		 * attempt set is its success, not a lost lease.
		 */
		l->beat_maybe_acted = (col(i, 18) && strcmp(col(i, 18), "t") == 0) ||
			l->last_heartbeat[0] == '\0';
		l->maybe_acted_at = l->beat_maybe_acted ? col_time(i, 21) : 0;
		/*
		 * An unconfirmed claim whose send was not recorded (the ack's
		 * answer was stored, the claim's not yet): it went out after the
		 * item was taken or last beaten.
		 */
		if (l->beat_maybe_acted && l->maybe_acted_at == 0)
			l->maybe_acted_at = Max(l->last_beat_at, l->taken_at);
		l->unacked = col(i, 20) && strcmp(col(i, 20), "t") == 0;

		/* A session's committed work_finish() is in finished_work. */
		if (strcmp(state, "finished") == 0 || col(i, 19) != NULL)
		{
			l->state = AE_LEASE_FINISHED;
			if (l->done_at == 0)
				l->done_at = col_time(i, 19);
		}
		else if (strcmp(state, "lost") == 0)
			l->state = AE_LEASE_LOST;
		else if (strcmp(col(i, 17), "t") != 0)
		{
			l->state = AE_LEASE_LOST;
			l->done_at = now;
			l->notify = !l->healthcheck;
			strlcpy(l->error, "the secret was lost in a crash (it is kept only in an UNLOGGED table); the item was released",
					sizeof(l->error));
		}
		else if (strcmp(state, "stop_requested") == 0)
			l->state = AE_LEASE_STOP_REQUESTED;
		else
		{
			/*
			 * Not announced yet: sessions may take it only once a beat
			 * after the restart succeeds, and apply_beat_answer() sends
			 * the NOTIFY then.
			 */
			l->state = AE_LEASE_READY;
		}

		/*
		 * The server, not the local clock, says whether a lease survived
		 * the time the server was down: until a beat is answered, the TTL
		 * rule counts from the restart.
		 */
		l->resumed = true;
	}
	ae_leases->loaded = true;
	ae_leases->loaded_at = now;
	LWLockRelease(ae_leases->lock);
	ConditionVariableBroadcast(&ae_leases->ready_cv);
}

/* ------------------------------------------------------------ persistence */

typedef struct PersistWork
{
	AeLease    *rows;
	int			nrows;
	bool	   *written;		/* per row: false when its row was locked */
	char	  **gone;
	int			ngone;
	bool	   *deleted;		/* per gone item: false when its row was locked */
	char	  **notify;
	int			nnotify;
} PersistWork;

/*
 * Locks the held_work row of an item without waiting: 1 when locked, 0
 * when there is no row, -1 when another transaction holds it.
 */
static int
lock_row(const char *work_id)
{
	Oid			t[1] = {TEXTOID};
	Datum		v[1];

	v[0] = text_datum(work_id);
	if (SPI_execute_with_args("SELECT 1 FROM anthropic.held_work WHERE work_id = $1 FOR UPDATE SKIP LOCKED",
							  1, t, v, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not lock a row of anthropic.held_work");
	if (SPI_processed == 1)
		return 1;
	if (SPI_execute_with_args("SELECT 1 FROM anthropic.held_work WHERE work_id = $1",
							  1, t, v, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read anthropic.held_work");
	return SPI_processed == 1 ? -1 : 0;
}

static void
persist(void *arg)
{
	PersistWork *w = arg;
	Oid			types[17] = {TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID,
		TIMESTAMPTZOID, TEXTOID, INT4OID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTOID,
	TIMESTAMPTZOID, INT4OID, BOOLOID, BOOLOID, TIMESTAMPTZOID};
	int			i;

	for (i = 0; i < w->nrows; i++)
	{
		AeLease    *l = &w->rows[i];
		Datum		v[17];
		char		n[17];
		int			k;

		for (k = 0; k < 17; k++)
			n[k] = ' ';
		v[0] = text_datum(l->work_id);
		v[1] = text_datum(ae_lease_state_name(l->state));
		v[2] = text_datum(l->consumer);
		n[2] = l->consumer[0] ? ' ' : 'n';
		v[3] = TimestampTzGetDatum(l->claimed_at);
		n[3] = l->claimed_at ? ' ' : 'n';
		v[4] = TimestampTzGetDatum(l->last_beat_at);
		n[4] = l->last_beat_at ? ' ' : 'n';
		v[5] = TimestampTzGetDatum(l->lease_expires_at);
		n[5] = l->lease_expires_at ? ' ' : 'n';
		v[6] = text_datum(l->last_heartbeat);
		n[6] = l->last_heartbeat[0] ? ' ' : 'n';
		v[7] = Int32GetDatum(l->ttl_seconds);
		v[8] = text_datum(l->remote_state);
		n[8] = l->remote_state[0] ? ' ' : 'n';
		v[9] = TimestampTzGetDatum(l->stop_sent_at);
		n[9] = l->stop_sent_at ? ' ' : 'n';
		v[10] = TimestampTzGetDatum(l->done_at);
		n[10] = l->done_at ? ' ' : 'n';
		v[11] = text_datum(l->error);
		n[11] = l->error[0] ? ' ' : 'n';
		v[12] = TimestampTzGetDatum(l->taken_at);
		v[13] = Int32GetDatum(l->claimed_pid);
		n[13] = l->claimed_pid ? ' ' : 'n';
		v[14] = BoolGetDatum(l->beat_maybe_acted);
		v[15] = BoolGetDatum(l->unacked);
		v[16] = TimestampTzGetDatum(l->maybe_acted_at);
		n[16] = l->beat_maybe_acted && l->maybe_acted_at ? ' ' : 'n';

		/*
		 * Sessions write only finished_work, never these rows; a row
		 * locked all the same (by hand) is written at a later flush rather
		 * than waited for.  A finished state is never overwritten.
		 */
		w->written[i] = lock_row(l->work_id) >= 0;
		if (!w->written[i])
			continue;
		if (SPI_execute_with_args("UPDATE anthropic.held_work SET state = $2, consumer = $3, claimed_at = $4, "
								  "last_beat_at = $5, lease_expires_at = $6, last_heartbeat = $7, "
								  "ttl_seconds = $8, remote_state = $9, stop_sent_at = $10, done_at = $11, "
								  "error = $12, taken_at = $13, claimed_pid = $14, beat_unanswered = $15, "
								  "ack_unanswered = $16, beat_unanswered_at = $17 "
								  "WHERE work_id = $1 AND (state <> 'finished' OR $2 = 'finished')",
								  17, types, v, n, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not update anthropic.held_work");
	}
	for (i = 0; i < w->ngone; i++)
	{
		Oid			t[1] = {TEXTOID};
		Datum		v[1];

		v[0] = text_datum(w->gone[i]);
		w->deleted[i] = lock_row(w->gone[i]) >= 0;
		if (!w->deleted[i])
			continue;
		if (SPI_execute_with_args("DELETE FROM anthropic.held_work WHERE work_id = $1", 1, t, v, NULL,
								  false, 0) != SPI_OK_DELETE)
			elog(ERROR, "could not delete from anthropic.held_work");
		if (SPI_execute_with_args("DELETE FROM anthropic.work_secrets WHERE work_id = $1", 1, t, v, NULL,
								  false, 0) != SPI_OK_DELETE ||
			SPI_execute_with_args("DELETE FROM anthropic.finished_work WHERE work_id = $1", 1, t, v, NULL,
								  false, 0) != SPI_OK_DELETE)
			elog(ERROR, "could not delete from anthropic.work_secrets");
	}
	for (i = 0; i < w->nnotify; i++)
	{
		Oid			t[1] = {TEXTOID};
		Datum		v[1];

		v[0] = text_datum(w->notify[i]);
		if (SPI_execute_with_args("SELECT pg_catalog.pg_notify('anthropic_work', $1)", 1, t, v, NULL,
								  false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not notify");
	}
}

/*
 * Writes every dirty lease, forgets terminal ones older than
 * AE_TERMINAL_KEEP_MS, and sends the NOTIFYs owed, in one transaction.
 * Returns whether that transaction committed (or had nothing to do).
 */
static bool
flush_leases(void)
{
	PersistWork w = {0};
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz horizon = TimestampTzPlusMilliseconds(now, -AE_TERMINAL_KEEP_MS);
	int			i;
	bool		ok;

	w.rows = palloc(sizeof(AeLease) * AE_MAX_LEASES);
	w.written = palloc0(sizeof(bool) * AE_MAX_LEASES);
	w.gone = palloc(sizeof(char *) * AE_MAX_LEASES);
	w.deleted = palloc0(sizeof(bool) * AE_MAX_LEASES);
	w.notify = palloc(sizeof(char *) * AE_MAX_LEASES);
	LWLockAcquire(ae_leases->lock, LW_EXCLUSIVE);
	for (i = 0; i < AE_MAX_LEASES; i++)
	{
		AeLease    *l = &ae_leases->leases[i];

		if (l->state == AE_LEASE_FREE)
			continue;
		if (l->notify)
		{
			w.notify[w.nnotify++] = pstrdup(l->work_id);
			l->notify = false;
		}
		/* The slot is freed only once its rows are deleted. */
		if ((l->state == AE_LEASE_FINISHED || l->state == AE_LEASE_LOST) &&
			l->claimed_pid == 0 && l->done_at != 0 && l->done_at < horizon &&
			(l->state == AE_LEASE_LOST || l->stop_sent_at != 0))
		{
			w.gone[w.ngone++] = pstrdup(l->work_id);
			continue;
		}
		if (l->dirty)
		{
			w.rows[w.nrows++] = *l;
			l->dirty = false;
		}
	}
	LWLockRelease(ae_leases->lock);
	if (w.nrows + w.ngone + w.nnotify == 0)
		return true;
	ok = in_xact(persist, &w, "record its leases");
	if (!ok)
	{
		memset(w.written, 0, sizeof(bool) * w.nrows);
		memset(w.deleted, 0, sizeof(bool) * w.ngone);
	}
	LWLockAcquire(ae_leases->lock, LW_EXCLUSIVE);
	/* A NOTIFY rolled back with the rest is owed again. */
	for (i = 0; !ok && i < w.nnotify; i++)
	{
		AeLease    *l = ae_lease_find(w.notify[i]);

		if (l)
			l->notify = true;
	}
	for (i = 0; i < w.nrows; i++)
	{
		AeLease    *l = ae_lease_find(w.rows[i].work_id);

		if (l && !w.written[i])
			l->dirty = true;
	}
	for (i = 0; i < w.ngone; i++)
	{
		AeLease    *l = ae_lease_find(w.gone[i]);

		if (l && w.deleted[i])
			l->state = AE_LEASE_FREE;
	}
	LWLockRelease(ae_leases->lock);
	return ok;
}

/* ----------------------------------------------------------------- keeper */

static void
mark(AeLease *l, AeLeaseState state, const char *error)
{
	l->state = state;
	/* Healthcheck items are the keeper's alone: never announced. */
	l->notify = !l->healthcheck;
	l->dirty = true;
	if (error)
		ae_lease_strcpy(l->error, error, sizeof(l->error));
	if (state == AE_LEASE_LOST || state == AE_LEASE_FINISHED)
		l->done_at = GetCurrentTimestamp();
}

/* When reap_dead_sessions() last ran. */
static TimestampTz reaped_at = 0;

/* Sessions that ended without finishing hand their items back. */
static void
reap_dead_sessions(void)
{
	int			i;
	bool		ready = false;

	reaped_at = GetCurrentTimestamp();
	LWLockAcquire(ae_leases->lock, LW_EXCLUSIVE);
	for (i = 0; i < AE_MAX_LEASES; i++)
	{
		AeLease    *l = &ae_leases->leases[i];

		if (l->claimed_pid == 0 || BackendPidGetProc(l->claimed_pid) != NULL)
			continue;
		l->claimed_pid = 0;
		l->finishing_pid = 0;
		l->dirty = true;
		if (l->state == AE_LEASE_STOP_REQUESTED)
			l->next_beat_at = 0;
		if (l->state == AE_LEASE_CLAIMED)
		{
			mark(l, AE_LEASE_READY, NULL);
			ready = true;
		}
	}
	for (i = 0; i < AE_MAX_WAITERS; i++)
		if (ae_leases->waiters[i].pid != 0 && BackendPidGetProc(ae_leases->waiters[i].pid) == NULL)
			ae_leases->waiters[i].pid = 0;
	LWLockRelease(ae_leases->lock);
	if (ready)
		ConditionVariableBroadcast(&ae_leases->ready_cv);
}

/*
 * The transport's wait hook in the keeper.  A round lasts as long as its
 * slowest wave of calls: with more than AE_MAX_CONCURRENCY beats hung it
 * runs one attempt per wave, and a round's re-fetches go one after another.
 * A dead session's item must be ready again within 2 s all the same, so the
 * check runs from inside the round's waits as well, every tick.
 */
static void
reap_while_sending(void)
{
	if (ae_leases == NULL || LWLockHeldByMe(ae_leases->lock) ||
		!TimestampDifferenceExceeds(reaped_at, GetCurrentTimestamp(), AE_KEEPER_TICK_MS))
		return;
	reap_dead_sessions();
}

typedef enum ActKind
{
	ACT_BEAT,
	ACT_STOP,
	ACT_ACK
} ActKind;

struct Act
{
	ActKind		kind;
	char		work_id[AE_ID_LEN];
	char		environment_id[AE_ID_LEN];
	char		last_heartbeat[AE_HB_LEN];
	TimestampTz last_beat_at;
};
typedef struct Act Act;

static int	send_acts(Act *acts, int n, int attempt_ms, TimestampTz now);

/*
 * The lease's beat (or claim) sent at `sent` (or earlier) went unanswered:
 * the server may have applied it, and the lease it set runs at most a TTL
 * from then.
 */
static void
beat_unanswered(AeLease *l, TimestampTz sent)
{
	l->beat_maybe_acted = true;
	if (sent > l->maybe_acted_at)
		l->maybe_acted_at = sent;
	l->dirty = true;
}

#define LOST_TO_ANOTHER_WORKER \
	"lease lost: the heartbeat's precondition failed (another worker holds the item)"

/*
 * Whether a call that failed may still have been carried out: no answer
 * after the request may have left, one a gateway may give after the server
 * acted, or a success whose body we could not read.  A request that never
 * left (a refused connection) cannot have acted: counting it would move
 * maybe_acted_at, and so the window in which a 412 is taken as our own
 * beat's, past the lease that beat can have set.
 */
static bool
failed_may_have_acted(const AeCallOutcome *o)
{
	return (o->status == 0 && o->maybe_acted) || (o->status >= 200 && o->status < 300) ||
		ae_retry_may_have_acted(AE_END_ANSWER, o->status);
}

/* Whether a failed claim is sent again: it may have acted, or was refused for now. */
static bool
claim_failed_for_now(const AeCallOutcome *o)
{
	return failed_may_have_acted(o) || o->status == 0 || o->status == 408 || o->status == 429 ||
		o->status >= 500;
}

/* Whether s (NULL counts) fits a buffer of len bytes with its terminator. */
static bool
fits(const char *s, size_t len)
{
	return s == NULL || strlen(s) < len;
}

static void
set_act(Act *a, ActKind kind, const AeLease *l)
{
	a->kind = kind;
	strlcpy(a->work_id, l->work_id, AE_ID_LEN);
	strlcpy(a->environment_id, l->environment_id, AE_ID_LEN);
	/* An unconfirmed claim is sent again as the claim it was. */
	strlcpy(a->last_heartbeat, l->last_heartbeat[0] ? l->last_heartbeat : "NO_HEARTBEAT", AE_HB_LEN);
	a->last_beat_at = l->last_beat_at;
}

/* A successful beat's answer (or a lost beat's, reconciled). */
static void
apply_beat_answer(AeLease *l, json_t *answer, TimestampTz now)
{
	const char *hb = aej_string(answer, "last_heartbeat");
	const char *state = aej_string(answer, "state");
	json_t	   *ext = json_object_get(answer, "lease_extended");
	json_t	   *ttl = json_object_get(answer, "ttl_seconds");
	bool		extended = ext && json_is_true(ext);
	bool		unconfirmed = l->last_heartbeat[0] == '\0';
	bool		resumed = l->resumed;

	if (json_is_integer(ttl) && json_integer_value(ttl) > 0 && json_integer_value(ttl) < 86400)
		l->ttl_seconds = (int) json_integer_value(ttl);
	strlcpy_or_empty(l->remote_state, state, sizeof(l->remote_state));
	l->dirty = true;
	l->beat_maybe_acted = false;
	l->maybe_acted_at = 0;
	l->resumed = false;
	if (extended && hb && fits(hb, AE_HB_LEN))
	{
		strlcpy(l->last_heartbeat, hb, AE_HB_LEN);
		l->last_beat_at = now;
		l->lease_expires_at = TimestampTzPlusMilliseconds(now, (int64) l->ttl_seconds * 1000);
		l->error[0] = '\0';
		/*
		 * A claim confirmed only now, or an item read back after a restart
		 * whose lease the server has just confirmed: sessions may take the
		 * item from here on.
		 */
		if (!l->healthcheck && (unconfirmed || (resumed && l->state == AE_LEASE_READY)))
		{
			l->notify = true;
			claims_confirmed = true;
		}
	}
	l->next_beat_at = TimestampTzPlusMilliseconds(now, beat_interval_ms(l->ttl_seconds));
	/* A finish past its last check is committing: it decides. */
	if (l->finishing_pid != 0)
		return;
	if (extended && hb && !fits(hb, AE_HB_LEN))
	{
		/* Not echoed verbatim, every later beat would fail its precondition. */
		l->next_beat_at = 0;
		mark(l, AE_LEASE_LOST, "lease lost: the server's last_heartbeat is longer than the 127 bytes the keeper keeps");
		return;
	}
	if (!extended || (state && (strcmp(state, "stopping") == 0 || strcmp(state, "stopped") == 0)))
	{
		l->next_beat_at = 0;
		mark(l, AE_LEASE_STOP_REQUESTED,
			 extended ? "the server asked to stop the item" : "the server did not extend the lease");
	}
}

/*
 * Whether a lease our unanswered beat may have set must be over by now: a
 * 412 showing a running lease is then another worker's (the server gave the
 * item away while we were down), not that beat's success.
 */
static bool
unanswered_lease_over(const AeLease *l, TimestampTz now)
{
	return l->maybe_acted_at != 0 &&
		now >= TimestampTzPlusMilliseconds(l->maybe_acted_at, (int64) l->ttl_seconds * 1000);
}

static void
apply_beat(AeLease *l, const Act *a, const AeCallOutcome *o, TimestampTz now)
{
	json_t	   *answer = NULL;

	/*
	 * When the answer came (or the attempt gave up): no earlier than the
	 * server can have met the beat, in whichever wave of the round it went.
	 */
	TimestampTz ended = Max(o->ended, now);

	if (o->error == NULL && o->answer != NULL)
	{
		apply_beat_answer(l, o->answer, now);
		return;
	}

	/*
	 * The keeper's own lost beat: an earlier attempt went unanswered, the
	 * server may have applied it, and this one repeats it with the old
	 * heartbeat.  Its 412 showing the lease that beat set is a success
	 * (retry.c's rule, the same as for a retry within one call).
	 */
	if (o->status == 412 && l->beat_maybe_acted && !unanswered_lease_over(l, ended) &&
		ae_retry_reconcile(AE_RECONCILE_HEARTBEAT, o->status, o->failed_body,
						   a->last_heartbeat, &answer) == AE_RECONCILED_ANSWER)
	{
		TimestampTz acted_at = l->maybe_acted_at;

		apply_beat_answer(l, answer, now);

		/*
		 * That lease runs from the unanswered beat, not from now: it is
		 * beaten again at once with the heartbeat it set.
		 */
		if (acted_at != 0 && (l->state == AE_LEASE_READY || l->state == AE_LEASE_CLAIMED))
		{
			l->last_beat_at = acted_at;
			l->lease_expires_at = TimestampTzPlusMilliseconds(acted_at, (int64) l->ttl_seconds * 1000);
			l->next_beat_at = now;
			/* The server's TTL, which the answer may have changed, decides. */
			if (l->lease_expires_at <= now && l->finishing_pid == 0)
				mark(l, AE_LEASE_LOST,
					 LOST_TO_ANOTHER_WORKER);
		}
		return;
	}
	if (o->status == 412 || o->status == 404)
	{
		if (l->finishing_pid != 0)
		{
			l->next_beat_at = TimestampTzPlusMilliseconds(now, AE_KEEPER_TICK_MS);
			return;
		}
		/* The SDK's rule: a lost lease is released, not stopped. */
		mark(l, AE_LEASE_LOST, o->status == 412 ?
			 LOST_TO_ANOTHER_WORKER :
			 "lease lost: the server no longer knows the item");
		return;
	}

	/*
	 * No answer, one a gateway may give after the server acted, or a
	 * success we could not read: the next beat may meet the lease this one
	 * set.  It goes out soon; the TTL rule decides when the lease is lost.
	 */
	if (failed_may_have_acted(o))
		beat_unanswered(l, ended);
	ae_lease_strcpy(l->error, o->error ? o->error->message : "heartbeat failed", sizeof(l->error));
	l->dirty = true;
	l->next_beat_at = TimestampTzPlusMilliseconds(now, Min(1000, beat_interval_ms(l->ttl_seconds) / 2));
}

static void
apply_stop(AeLease *l, const AeCallOutcome *o, TimestampTz now)
{
	if (o->error == NULL || o->status == 409 || o->status == 404)
	{
		l->stop_sent_at = now;
		l->dirty = true;

		/*
		 * Stopped at the server's request, or a healthcheck: nothing is
		 * left to do, so it is done like a finished item (no NOTIFY, as
		 * for any finish), and its slot, row and secret go after the
		 * horizon.
		 */
		if (l->state == AE_LEASE_STOP_REQUESTED || (l->healthcheck && l->state != AE_LEASE_FINISHED))
		{
			l->state = AE_LEASE_FINISHED;
			l->done_at = now;
		}
		return;
	}
	l->stop_failures++;
	ae_lease_strcpy(l->error, o->error->message, sizeof(l->error));
	l->dirty = true;
	l->next_beat_at = TimestampTzPlusMilliseconds(now, 1000L << Min(l->stop_failures, 6));
}

/*
 * The ack of an item stored at its poll whose first ack went unanswered.
 * Acked (or its 409 reconciled: the lost ack was applied), its
 * NO_HEARTBEAT claim goes out next.  A 409 or 404 that stands means the
 * server no longer offers it to us: released.
 */
/*
 * Whether a failed ack's outcome says the item is not ours: a 404, or a
 * 409 that the re-fetch checked (its error is the 409's own).  A 409 whose
 * re-fetch failed (a 429, a timeout) tells nothing: the ack is sent again.
 */
static bool
ack_refused(const AeCallOutcome *o)
{
	return o->status == 404 ||
		(o->status == 409 && o->error->sqlerrcode == ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE);
}

static void
apply_ack(AeLease *l, const AeCallOutcome *o, TimestampTz now)
{
	l->dirty = true;
	/* As in the poller: without an API key, the claim decides a 409. */
	if (o->error == NULL || (o->status == 409 && ae_effective_api_key() == NULL))
	{
		/* No claim was sent yet: its 412 would be another worker's. */
		l->beat_maybe_acted = false;
		l->maybe_acted_at = 0;
		l->unacked = false;
		l->error[0] = '\0';
		l->next_beat_at = now;
		return;
	}
	if (ack_refused(o))
	{
		mark(l, AE_LEASE_LOST, "released: its ack went unanswered and the server no longer offers the item");
		return;
	}
	ae_lease_strcpy(l->error, o->error->message, sizeof(l->error));
	l->next_beat_at = TimestampTzPlusMilliseconds(now, 1000);
}

/*
 * One round: decides under the lock what is due, sends it all at once
 * without the lock, applies the answers under the lock.
 */
static long
keeper_round(void)
{
	TimestampTz now = GetCurrentTimestamp();
	Act		   *acts = palloc(sizeof(Act) * AE_MAX_LEASES);
	int			n = 0;
	int			min_interval = 30000;
	long		sleep_ms = AE_KEEPER_TICK_MS;
	int			i;
	bool		lost = false;

	LWLockAcquire(ae_leases->lock, LW_EXCLUSIVE);
	for (i = 0; i < AE_MAX_LEASES; i++)
	{
		AeLease    *l = &ae_leases->leases[i];
		bool		beat = false;
		bool		stop = false;
		bool		ack = false;

		switch (l->state)
		{
			case AE_LEASE_READY:
			case AE_LEASE_CLAIMED:
				if (l->last_beat_at != 0 && l->finishing_pid == 0 &&
					now > TimestampTzPlusMilliseconds(l->resumed ? Max(l->last_beat_at, ae_leases->loaded_at) :
													  l->last_beat_at, (int64) l->ttl_seconds * 1000))
				{
					mark(l, AE_LEASE_LOST, "lease lost: no successful heartbeat for longer than the TTL");
					lost = true;
					break;
				}
				if (l->unacked)
					ack = l->next_beat_at <= now;
				else if (l->healthcheck)
					stop = l->stop_sent_at == 0 && l->next_beat_at <= now;
				else
					beat = l->next_beat_at <= now;
				break;
			case AE_LEASE_STOP_REQUESTED:
				stop = l->claimed_pid == 0 && l->stop_sent_at == 0 && l->next_beat_at <= now;
				break;
			case AE_LEASE_FINISHED:
				stop = l->stop_sent_at == 0 && l->next_beat_at <= now;
				break;
			default:
				break;
		}
		if (beat || stop || ack)
		{
			set_act(&acts[n++], beat ? ACT_BEAT : (ack ? ACT_ACK : ACT_STOP), l);
			if (beat)
				min_interval = Min(min_interval, beat_interval_ms(l->ttl_seconds));
		}
		else if ((l->state == AE_LEASE_READY || l->state == AE_LEASE_CLAIMED) && !l->healthcheck)
			sleep_ms = Min(sleep_ms, Max(1, TimestampDifferenceMilliseconds(now, l->next_beat_at)));
	}
	LWLockRelease(ae_leases->lock);
	(void) lost;
	if (n == 0)
		return sleep_ms;
	send_acts(acts, n, Min(AE_BEAT_ATTEMPT_MAX_MS, Max(AE_BEAT_ATTEMPT_MIN_MS, min_interval / 2)), now);
	return 0;
}

/*
 * Sends a round's beats and stops at once, each one attempt of at most
 * attempt_ms, and applies the answers under the lock.
 */
static int
send_acts(Act *acts, int n, int attempt_ms, TimestampTz now)
{
	AeCall	   *calls;
	AeCallOutcome *out;
	int			i;
	int			answered = 0;

	calls = palloc0(sizeof(AeCall) * n);
	out = palloc0(sizeof(AeCallOutcome) * n);
	for (i = 0; i < n; i++)
	{
		calls[i].args[0] = acts[i].environment_id;
		calls[i].args[1] = acts[i].work_id;
		calls[i].no_retry = true;
		if (acts[i].kind == ACT_BEAT)
		{
			calls[i].endpoint = AE_WORK_HEARTBEAT;
			calls[i].query[0].name = "expected_last_heartbeat";
			calls[i].query[0].value = acts[i].last_heartbeat;
		}
		else if (acts[i].kind == ACT_ACK)
		{
			/* The lost ack may have been applied: a 409 is reconciled. */
			calls[i].endpoint = AE_WORK_ACK;
			calls[i].repeats = true;
		}
		else
		{
			calls[i].endpoint = AE_WORK_STOP;
			calls[i].body = "{\"force\":true}";
		}
	}
	/*
	 * The round holds every other beat, the dead-session check and the
	 * lost-lease check until its slowest call ends, so no call may take
	 * long: one attempt, no retry within the call (a Retry-After would
	 * otherwise hold the round for as long as the server likes), at most
	 * half the shortest interval and 1 s.  A beat that fails is sent again
	 * at a later round, well within its interval.  Times count from the
	 * send, so a slow round delays no lease's next beat.
	 */
	SetConfigOption("anthropic.timeout_ms", psprintf("%d", attempt_ms), PGC_SUSET, PGC_S_SESSION);
	inflight = acts;
	inflight_out = out;
	ninflight = n;
	ae_api_call_each(calls, n, AE_MAX_CONCURRENCY, out);
	ninflight = 0;
	inflight = NULL;

	claims_confirmed = false;
	LWLockAcquire(ae_leases->lock, LW_EXCLUSIVE);
	for (i = 0; i < n; i++)
	{
		AeLease    *l = ae_lease_find(acts[i].work_id);

		if (out[i].error == NULL)
			answered++;
		if (l == NULL)
			continue;
		if (acts[i].kind == ACT_BEAT)
		{
			/* A claim, release or finish meanwhile changes nothing here. */
			if (l->state == AE_LEASE_READY || l->state == AE_LEASE_CLAIMED)
				apply_beat(l, &acts[i], &out[i], now);
		}
		else if (acts[i].kind == ACT_ACK)
		{
			if (l->state == AE_LEASE_READY)
				apply_ack(l, &out[i], now);
		}
		else
			apply_stop(l, &out[i], now);
	}
	LWLockRelease(ae_leases->lock);
	if (claims_confirmed)
		ConditionVariableBroadcast(&ae_leases->ready_cv);
	return answered;
}

/* --------------------------------------------------------- on the way out */

/*
 * SIGTERM in the keeper acts as a cancel: the round in flight ends at its
 * next interrupt check through the transport's own cleanup (a FATAL there
 * would leave its transfers inside the multi handle, and no last round
 * could be sent), and the main loop then sends the last round and exits.
 *
 * Only the first SIGTERM cancels.  The postmaster signals a child and then
 * the child's process group (signal_child()), so one shutdown delivers
 * SIGTERM twice whenever the keeper runs between the two kills; taking the
 * second as "hurry" cut the last round short about a millisecond after it
 * began.  The last round ends by its own bound, and SIGQUIT remains for an
 * immediate stop.
 */
static void
keeper_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	if (!keeper_stopping)
	{
		keeper_stopping = true;
		InterruptPending = true;
		QueryCancelPending = true;
	}
	SetLatch(MyLatch);
	errno = save_errno;
}

static int
act_older(const void *a, const void *b)
{
	TimestampTz ta = ((const Act *) a)->last_beat_at;
	TimestampTz tb = ((const Act *) b)->last_beat_at;

	return ta < tb ? -1 : (ta > tb ? 1 : 0);
}

/*
 * One last beat of the held leases, oldest beat first, so that a restart
 * shorter than the TTL finds every lease running for a whole TTL from the
 * shutdown instead of what was left of it.  One wave of requests of at
 * most AE_LAST_ROUND_MS keeps the exit within a second; leases beyond it
 * keep the lease their last beat gave.  Nothing is stopped.
 */
static void
last_round(void)
{
	Act		   *acts = palloc(sizeof(Act) * AE_MAX_LEASES);
	int			n = 0;
	int			held;
	int			answered;
	int			i;

	LWLockAcquire(ae_leases->lock, LW_EXCLUSIVE);
	for (i = 0; i < AE_MAX_LEASES; i++)
	{
		AeLease    *l = &ae_leases->leases[i];

		if ((l->state == AE_LEASE_READY || l->state == AE_LEASE_CLAIMED) && !l->healthcheck &&
			l->finishing_pid == 0 && !l->unacked)
			set_act(&acts[n++], ACT_BEAT, l);
	}
	LWLockRelease(ae_leases->lock);
	if (n == 0)
	{
		ereport(LOG,
				(errmsg("anthropic_env lease keeper holds no lease to beat on its way out")));
		return;
	}
	qsort(acts, n, sizeof(Act), act_older);
	held = n;
	n = Min(n, AE_MAX_CONCURRENCY);
	answered = send_acts(acts, n, AE_LAST_ROUND_MS, GetCurrentTimestamp());

	/*
	 * Whether the leases outlive a restart depends on this round: the log
	 * says how it went, as a checkpoint's line does.
	 */
	ereport(LOG,
			(errmsg("anthropic_env lease keeper beat %d of %d held leases on its way out, %d answered",
					n, held, answered)));
}

/*
 * The beats of a batch a raise cut short that had begun, and were not
 * refused, may be applied after we are gone, or were and their heartbeat
 * is lost with the batch: they are unanswered as of now.  Called with the
 * leases' lock held.
 */
static void
inflight_unanswered(void)
{
	int			i;

	for (i = 0; i < ninflight; i++)
	{
		AeLease    *l = ae_lease_find(inflight[i].work_id);
		const AeCallOutcome *o = &inflight_out[i];

		if (l && inflight[i].kind == ACT_BEAT && o->began &&
			(o->status == 0 || (o->status >= 200 && o->status < 300) ||
			 ae_retry_may_have_acted(AE_END_ANSWER, o->status)) &&
			(l->state == AE_LEASE_READY || l->state == AE_LEASE_CLAIMED))
			beat_unanswered(l, GetCurrentTimestamp());
	}
	ninflight = 0;
	inflight = NULL;
}

/*
 * After SIGTERM: what was in flight may have been applied, a last round
 * goes out, everything owed is written, then the keeper exits like die().
 */
static void
keeper_stop(void)
{
	QueryCancelPending = false;
	MemoryContextSwitchTo(TopMemoryContext);
	LWLockAcquire(ae_leases->lock, LW_EXCLUSIVE);
	inflight_unanswered();
	LWLockRelease(ae_leases->lock);
	/* The last round's 0.5 s and two waits for a lock fit in the second. */
	SetConfigOption("lock_timeout", "200", PGC_SUSET, PGC_S_OVERRIDE);
	PG_TRY();
	{
		if (ae_leases->loaded)
		{
			last_round();
			/* If this fails, keeper_exit() records what it could not. */
			stop_flushed = flush_leases();
		}
		else
			stop_flushed = true;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		/*
		 * A failure (a lock timeout, out of memory): the last round's beats
		 * may be in flight, and keeper_exit() records them as unanswered.
		 * The log says why, since the leases' fate after a restart hangs on
		 * it.
		 */
		MemoryContextSwitchTo(TopMemoryContext);
		edata = CopyErrorData();
		FlushErrorState();
		LWLockReleaseAll();
		AbortOutOfAnyTransaction();
		ereport(LOG,
				(errmsg("anthropic_env lease keeper's last round was cut short: %s", edata->message)));
	}
	PG_END_TRY();
	ereport(FATAL,
			(errcode(ERRCODE_ADMIN_SHUTDOWN),
			 errmsg("terminating anthropic_env lease keeper due to administrator command")));
}

/* A lease keeper_exit() records, as of its latest beat that may have acted. */
typedef struct Unanswered
{
	char		work_id[AE_ID_LEN];
	TimestampTz at;
} Unanswered;

static void
write_unanswered(void *arg)
{
	List	   *ids = arg;
	ListCell   *lc;

	/*
	 * On the way out no lock_timeout works (proc_exit ignores the cancel it
	 * sends): a table lock on held_work must fail this at once, not hold
	 * the exit for good.
	 */
	if (SPI_execute("LOCK TABLE anthropic.held_work IN ROW EXCLUSIVE MODE NOWAIT", false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not lock anthropic.held_work");
	foreach(lc, ids)
	{
		Unanswered *u = lfirst(lc);
		Oid			t[2] = {TEXTOID, TIMESTAMPTZOID};
		Datum		v[2];

		/* A row a session's open work_finish() holds is left alone. */
		if (lock_row(u->work_id) != 1)
			continue;
		v[0] = text_datum(u->work_id);
		v[1] = TimestampTzGetDatum(u->at);

		/*
		 * Its own time, not the exit's: the window in which a restart takes
		 * a 412 as that beat's runs a TTL from it, and no longer.
		 */
		if (SPI_execute_with_args("UPDATE anthropic.held_work SET beat_unanswered = true, beat_unanswered_at = $2 "
								  "WHERE work_id = $1",
								  2, t, v, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not update anthropic.held_work");
	}
}

/*
 * An exit other than through keeper_stop() (an error, or a failure in the
 * last round or its flush) may leave beats in flight that the server
 * applies after we are gone, a failed beat not flushed, or an answered
 * one whose heartbeat never reached the table.  A clean restart must not
 * read the 412 its next beat meets as another worker's: every such lease
 * is recorded as beat_unanswered, as of its beat that may have acted (an
 * answered one: as of that beat), so that load_held() reconciles it.  Runs
 * before ShutdownPostgres, outside any transaction of ours (an interrupted
 * one is aborted first).
 */
static void
keeper_exit(int code, Datum arg)
{
	List	   *ids = NIL;
	int			i;

	if (ae_leases == NULL || !ae_leases->loaded || stop_flushed)
		return;
	LWLockReleaseAll();
	AbortOutOfAnyTransaction();
	MemoryContextSwitchTo(TopMemoryContext);
	LWLockAcquire(ae_leases->lock, LW_EXCLUSIVE);
	inflight_unanswered();
	for (i = 0; i < AE_MAX_LEASES; i++)
	{
		AeLease    *l = &ae_leases->leases[i];

		if ((l->state == AE_LEASE_READY || l->state == AE_LEASE_CLAIMED) &&
			(l->beat_maybe_acted || l->dirty))
		{
			Unanswered *u = palloc(sizeof(Unanswered));

			strlcpy(u->work_id, l->work_id, sizeof(u->work_id));
			if (l->beat_maybe_acted)
				u->at = l->maybe_acted_at;
			else
				u->at = Max(l->last_beat_at, l->taken_at);
			if (u->at == 0)
				u->at = GetCurrentTimestamp();
			ids = lappend(ids, u);
		}
	}
	LWLockRelease(ae_leases->lock);
	if (ids != NIL)
		(void) in_xact(write_unanswered, ids, "record its unanswered beats");
}

/* ----------------------------------------------------------------- poller */

typedef struct Taken
{
	json_t	   *item;
	Jsonb	   *raw;			/* the item as the server wrote it */
	Served	   *env;
	AeLease		lease;
	bool		polled;			/* a poll returned it */
	bool		stored;			/* its row and secret stored (at the poll) */
	bool		ok;				/* acked and its lease claimed */
	bool		pending;		/* acked, the claim's answer lost or refused
								 * for now: the keeper claims it again */
	bool		claim_maybe_acted;	/* that claim may have been applied */
	bool		ack_pending;	/* stored at the poll, the ack's answer lost */
	TimestampTz claimed_at;		/* when the lease was claimed */
} Taken;

typedef enum StoreStage
{
	STORE_POLLED,				/* before the ack */
	STORE_ACKED,				/* before the NO_HEARTBEAT claim */
	STORE_CLAIMED
} StoreStage;

/*
 * Writes an item's row and secret: at the poll, before the ack (so that an
 * ack whose answer a shutdown cuts off is sent again, not forgotten), at
 * the ack with no heartbeat (the claim is not confirmed yet), after the
 * claim with its heartbeat.
 */
static void
store_one(Taken *t, StoreStage stage)
{
	bool		claimed = (stage == STORE_CLAIMED);
	Oid			types[8] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, JSONBOID, TEXTOID, BOOLOID, BOOLOID};
	Datum		v[8];
	char		n[8] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	Jsonb	   *md = ae_jsonb_member(t->raw, "metadata");
	const char *secret = aej_string(t->item, "secret");

	v[0] = text_datum(t->lease.work_id);
	v[1] = text_datum(t->lease.environment_id);
	v[2] = text_datum(t->lease.data_type);
	v[3] = text_datum(t->lease.data_id);
	if (md && JB_ROOT_IS_OBJECT(md))
		v[4] = PointerGetDatum(md);
	else
		n[4] = 'n';
	v[5] = text_datum(t->lease.last_heartbeat);
	n[5] = claimed ? ' ' : 'n';
	v[6] = BoolGetDatum(t->lease.healthcheck);
	v[7] = BoolGetDatum(stage == STORE_POLLED);
	if (SPI_execute_with_args("INSERT INTO anthropic.held_work (work_id, environment_id, data_type, data_id, "
							  "metadata, state, last_heartbeat, ttl_seconds, taken_at, last_beat_at, "
							  "lease_expires_at, healthcheck, beat_unanswered, ack_unanswered, beat_unanswered_at) "
							  "VALUES ($1, $2, $3, $4, $5, 'ready', $6, 120, now(), now(), now(), $7, $6 IS NULL, $8, "
							  "CASE WHEN $6 IS NULL THEN now() END) "
							  "ON CONFLICT (work_id) "
							  "DO UPDATE SET state = 'ready', last_heartbeat = EXCLUDED.last_heartbeat, "
							  "beat_unanswered = EXCLUDED.beat_unanswered, ack_unanswered = EXCLUDED.ack_unanswered, "
							  "beat_unanswered_at = EXCLUDED.beat_unanswered_at, "
							  "taken_at = now(), done_at = NULL, stop_sent_at = NULL, error = NULL",
							  8, types, v, n, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not insert into anthropic.held_work");
	if (secret)
	{
		Oid			st[2] = {TEXTOID, TEXTOID};
		Datum		sv[2];

		sv[0] = text_datum(t->lease.work_id);
		sv[1] = text_datum(secret);
		if (SPI_execute_with_args("INSERT INTO anthropic.work_secrets (work_id, secret) VALUES ($1, $2) "
								  "ON CONFLICT (work_id) DO UPDATE SET secret = EXCLUDED.secret",
								  2, st, sv, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not insert into anthropic.work_secrets");
	}
}

/*
 * Stored at the poll, before the ack, and again right after the ack,
 * before the NO_HEARTBEAT claim: a shutdown while either is in flight then
 * leaves a row that a restart reads back and acks or claims again, instead
 * of an acked item nobody knows of.
 */
static void
store_polled(void *arg)
{
	store_one((Taken *) arg, STORE_POLLED);
}

static void
store_acked(void *arg)
{
	store_one((Taken *) arg, STORE_ACKED);
}

/* After the round: claimed items get their heartbeat, dropped ones go. */
static void
store_taken(void *arg)
{
	List	   *taken = arg;
	ListCell   *lc;

	foreach(lc, taken)
	{
		Taken	   *t = lfirst(lc);

		if (t->ok)
			store_one(t, STORE_CLAIMED);
		else if (t->stored && !t->pending && !t->ack_pending)
		{
			Oid			tt[1] = {TEXTOID};
			Datum		v[1];

			/* Its claim surely failed: nothing holds it. */
			v[0] = text_datum(t->lease.work_id);
			if (SPI_execute_with_args("DELETE FROM anthropic.held_work WHERE work_id = $1 AND last_heartbeat IS NULL",
									  1, tt, v, NULL, false, 0) != SPI_OK_DELETE ||
				SPI_execute_with_args("DELETE FROM anthropic.work_secrets s WHERE s.work_id = $1 AND NOT EXISTS "
									  "(SELECT 1 FROM anthropic.held_work h WHERE h.work_id = s.work_id)",
									  1, tt, v, NULL, false, 0) != SPI_OK_DELETE)
				elog(ERROR, "could not delete from anthropic.held_work");
		}
	}
}

static void
env_failed(Served *s, ErrorData *e, const char *what)
{
	long		delay = Min(1000L << Min(s->failures, 6), (long) AE_POLL_BACKOFF_MAX_MS);

	s->failures++;
	delay -= (long) (delay * 0.25 * (pg_prng_double(&pg_global_prng_state)));
	s->backoff_until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), delay);
	ereport(WARNING,
			(errmsg("anthropic_env work poller: %s for environment \"%s\" failed: %s",
					what, s->environment_id, e->message),
			 e->detail ? errdetail_internal("%s", e->detail) : 0,
			 errhint("Polling this environment backs off for %ld ms; the others go on.", delay)));
}

/* The chains of one poller round. */
typedef struct PollRound
{
	Served	  **envs;			/* per chain */
	Taken	   *taken;			/* per chain */
	AeCall	   *next;			/* per chain: its ack, then its claim */
} PollRound;

/* After each call of an environment's chain: what to send next. */
static const AeCall *
poll_chain_next(void *arg, int chain, const AeCall *call, const AeCallOutcome *o)
{
	PollRound  *r = arg;
	Served	   *s = r->envs[chain];
	Taken	   *t = &r->taken[chain];
	AeCall	   *next = &r->next[chain];
	const char *hb;
	json_t	   *ttl;
	json_t	   *data;

	switch (call->endpoint)
	{
		case AE_WORK_POLL:
			if (o->error)
			{
				env_failed(s, o->error, "polling");
				return NULL;
			}
			s->failures = 0;
			if (o->answer == NULL)
				return NULL;
			data = json_object_get(o->answer, "data");
			/* Cut short, an id would name another item to every call. */
			if (!fits(aej_string(o->answer, "id"), AE_ID_LEN) ||
				!fits(data ? aej_string(data, "id") : NULL, AE_ID_LEN))
			{
				ereport(WARNING,
						(errmsg("anthropic_env work poller left a work item of environment \"%s\" unacknowledged",
								s->environment_id),
						 errdetail("Its id or data id is longer than %d bytes.", AE_ID_LEN - 1)));
				return NULL;
			}
			t->item = o->answer;
			t->env = s;
			strlcpy_or_empty(t->lease.work_id, aej_string(o->answer, "id"), AE_ID_LEN);
			strlcpy(t->lease.environment_id, s->environment_id, AE_ID_LEN);
			strlcpy_or_empty(t->lease.data_type, data ? aej_string(data, "type") : NULL,
							 sizeof(t->lease.data_type));
			strlcpy_or_empty(t->lease.data_id, data ? aej_string(data, "id") : NULL, AE_ID_LEN);
			t->lease.healthcheck = strcmp(t->lease.data_type, "healthcheck") == 0;
			if (t->lease.work_id[0] == '\0')
				return NULL;
			t->polled = true;
			t->stored = in_xact(store_polled, t, psprintf("store the polled work item \"%s\"", t->lease.work_id));
			if (!t->stored)
				return NULL;
			memset(next, 0, sizeof(AeCall));
			next->endpoint = AE_WORK_ACK;
			next->args[0] = t->lease.environment_id;
			next->args[1] = t->lease.work_id;

			/*
			 * One attempt, as the poll's: a retry (or a 409's re-fetch)
			 * waiting out a Retry-After would hold every other
			 * environment's poll and ack.  What fails is stored as owed,
			 * and the keeper's rounds send it again.
			 */
			next->no_retry = true;
			return next;
		case AE_WORK_ACK:
			/*
			 * A 409 that no re-fetch could check (there is no API key) may
			 * be our own lost ack: the NO_HEARTBEAT claim decides whose
			 * item it is.
			 */
			if (o->error && !(o->status == 409 && ae_effective_api_key() == NULL))
			{
				env_failed(s, o->error, psprintf("acknowledging work item \"%s\"", t->lease.work_id));
				/*
				 * The server may have applied it, or a 409's re-fetch
				 * failed: the keeper acks it again.
				 */
				t->ack_pending = failed_may_have_acted(o) || o->status == 0 ||
					(o->status == 409 && !ack_refused(o));
				return NULL;
			}
			/*
			 * Only an acked item gets its lease claimed, and only once
			 * stored as acked; else its row still says the ack is owed,
			 * and the keeper acks it again (the 409 is reconciled).
			 */
			if (!in_xact(store_acked, t, psprintf("store the acked work item \"%s\"", t->lease.work_id)))
			{
				t->ack_pending = true;
				return NULL;
			}
			memset(next, 0, sizeof(AeCall));
			next->endpoint = AE_WORK_HEARTBEAT;
			next->args[0] = t->lease.environment_id;
			next->args[1] = t->lease.work_id;
			next->query[0].name = "expected_last_heartbeat";
			next->query[0].value = "NO_HEARTBEAT";
			next->no_retry = true;
			return next;
		case AE_WORK_HEARTBEAT:
			hb = o->answer ? aej_string(o->answer, "last_heartbeat") : NULL;
			ttl = o->answer ? json_object_get(o->answer, "ttl_seconds") : NULL;
			if (o->error)
			{
				env_failed(s, o->error, psprintf("claiming the lease of work item \"%s\"", t->lease.work_id));
				/*
				 * The server may have applied it, or refused it for now (the
				 * claim is sent once): the keeper claims it again.
				 */
				t->claim_maybe_acted = failed_may_have_acted(o);
				t->pending = claim_failed_for_now(o);
			}
			if (o->error || hb == NULL)
				return NULL;
			if (!fits(hb, AE_HB_LEN))
			{
				ereport(WARNING,
						(errmsg("anthropic_env work poller could not hold work item \"%s\"", t->lease.work_id),
						 errdetail("The lease's last_heartbeat is longer than %d bytes; the item is left to expire on the server.",
								   AE_HB_LEN - 1)));
				return NULL;
			}
			t->ok = true;
			/* The lease runs from now, not from the end of the round. */
			t->claimed_at = GetCurrentTimestamp();
			strlcpy(t->lease.last_heartbeat, hb, AE_HB_LEN);
			t->lease.ttl_seconds = (json_is_integer(ttl) && json_integer_value(ttl) > 0) ?
				(int) json_integer_value(ttl) : 120;
			strlcpy_or_empty(t->lease.remote_state, aej_string(o->answer, "state"),
							 sizeof(t->lease.remote_state));
			return NULL;
		default:
			return NULL;
	}
}

/*
 * After the poller alone restarted: rows it stored at a poll or an ack
 * whose ack or claim was in flight when it went are held again (a server
 * restart's load_held() has read them already), their ack and claim sent
 * again by the keeper.
 */
static void
adopt_unconfirmed(void *arg)
{
	int			i;
	TimestampTz now = GetCurrentTimestamp();

	if (SPI_execute("SELECT h.work_id, h.environment_id, h.data_type, h.data_id, h.healthcheck, "
					"h.ack_unanswered "
					"FROM anthropic.held_work h JOIN anthropic.work_secrets s USING (work_id) "
					"WHERE h.last_heartbeat IS NULL AND h.state = 'ready'", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read anthropic.held_work");
	LWLockAcquire(ae_leases->lock, LW_EXCLUSIVE);
	for (i = 0; i < (int) SPI_processed; i++)
	{
		AeLease    *l;

		if (ae_lease_find(col(i, 1)) != NULL || (l = free_slot()) == NULL)
			continue;
		memset(l, 0, sizeof(*l));
		strlcpy(l->work_id, col(i, 1), AE_ID_LEN);
		strlcpy(l->environment_id, col(i, 2), AE_ID_LEN);
		strlcpy_or_empty(l->data_type, col(i, 3), sizeof(l->data_type));
		strlcpy_or_empty(l->data_id, col(i, 4), AE_ID_LEN);
		l->healthcheck = col(i, 5) && strcmp(col(i, 5), "t") == 0;
		l->ttl_seconds = 120;
		l->taken_at = l->last_beat_at = l->next_beat_at = now;
		beat_unanswered(l, now);
		l->unacked = col(i, 6) && strcmp(col(i, 6), "t") == 0;
		l->state = AE_LEASE_READY;
		l->dirty = true;
	}
	LWLockRelease(ae_leases->lock);
	ae_leases_wake_keeper();
}

/*
 * After unserve(): the environment's ready items are released the way the
 * SDK lets go of the items of a queue it shuts down, by no longer beating
 * them (shown lost; the server hands them to another worker once the lease
 * runs out).  A claimed item keeps its beats until its session finishes it
 * or lets it go, and is released then.
 */
static void
release_unserved(void)
{
	int			i;
	bool		any = false;

	LWLockAcquire(ae_leases->lock, LW_EXCLUSIVE);
	for (i = 0; i < AE_MAX_LEASES; i++)
	{
		AeLease    *l = &ae_leases->leases[i];
		bool		is_served = false;
		int			j;

		if (l->state != AE_LEASE_READY || l->claimed_pid != 0 || l->healthcheck)
			continue;
		for (j = 0; j < nserved && !is_served; j++)
			is_served = strcmp(served[j].environment_id, l->environment_id) == 0;
		if (is_served)
			continue;
		l->state = AE_LEASE_LOST;
		l->notify = true;
		l->dirty = true;
		l->done_at = GetCurrentTimestamp();
		ae_lease_strcpy(l->error, "released: the environment is no longer served (anthropic.unserve)",
						sizeof(l->error));
		any = true;
	}
	LWLockRelease(ae_leases->lock);
	if (any)
		ae_leases_wake_keeper();
}

/* One round of the poller: polls, acks, claims; returns how long to sleep. */
static long
poller_round(void)
{
	int			want[AE_MAX_SERVED];
	int			n = 0;
	int			i;
	TimestampTz now = GetCurrentTimestamp();
	AeCall	   *calls;
	AeCallOutcome *out;
	List	   *taken = NIL;
	ListCell   *lc;
	int			nfree = 0;
	bool		full = false;
	bool		stored_ok;
	PollRound	r;

	LWLockAcquire(ae_leases->lock, LW_SHARED);
	for (i = 0; i < AE_MAX_LEASES; i++)
		if (ae_leases->leases[i].state == AE_LEASE_FREE)
			nfree++;
	for (i = 0; i < nserved; i++)
	{
		Served	   *s = &served[i];
		int			waiting = 0;
		int			ready = 0;
		int			j;

		if (s->backoff_until > now)
			continue;
		for (j = 0; j < AE_MAX_WAITERS; j++)
			if (ae_leases->waiters[j].pid != 0 &&
				strcmp(ae_leases->waiters[j].environment_id, s->environment_id) == 0)
				waiting++;
		for (j = 0; j < AE_MAX_LEASES; j++)
		{
			AeLease    *l = &ae_leases->leases[j];

			if (l->state == AE_LEASE_READY && !l->healthcheck &&
				strcmp(l->environment_id, s->environment_id) == 0)
				ready++;
		}
		if (waiting > ready || ready < s->prefetch)
		{
			/*
			 * Only the poller fills slots, so a poll for each free slot
			 * never takes an item the table cannot hold: an item taken
			 * beyond it would be acked, then left to expire.
			 */
			if (n >= nfree)
			{
				full = true;
				break;
			}
			want[n++] = i;
		}
	}
	LWLockRelease(ae_leases->lock);
	full = full && nfree == 0;
	if (full && !told_full)
		ereport(WARNING,
				(errmsg("anthropic_env work poller holds %d leases, the most it can: it polls again once an item is gone",
						AE_MAX_LEASES)));
	told_full = full;
	if (n == 0)
		return full ? AE_KEEPER_TICK_MS : 1000;

	calls = palloc0(sizeof(AeCall) * n);
	out = palloc0(sizeof(AeCallOutcome) * n);
	r.envs = palloc(sizeof(Served *) * n);
	r.taken = palloc0(sizeof(Taken) * n);
	r.next = palloc0(sizeof(AeCall) * n);
	for (i = 0; i < n; i++)
	{
		r.envs[i] = &served[want[i]];
		calls[i].endpoint = AE_WORK_POLL;
		calls[i].args[0] = served[want[i]].environment_id;
		calls[i].query[0].name = "block_ms";
		calls[i].query[0].value = "999";
		calls[i].extra_timeout_ms = 999;
		calls[i].worker_id = served[want[i]].worker_id;
		/* The metadata stored is the server's text, numbers as written. */
		calls[i].raw_out = &r.taken[i].raw;
		/* A failed poll is not retried: the environment's backoff takes over. */
		calls[i].no_retry = true;
	}

	/*
	 * Each environment's poll, ack and NO_HEARTBEAT claim form a chain:
	 * the ack goes out as soon as its poll answers, not after the other
	 * environments' long polls, and a failing environment holds only its
	 * own chain.
	 */
	SetConfigOption("anthropic.timeout_ms", "2000", PGC_SUSET, PGC_S_SESSION);
	ae_api_call_chains(calls, n, AE_MAX_CONCURRENCY, poll_chain_next, &r, out);
	for (i = 0; i < n; i++)
		if (r.taken[i].polled)
			taken = lappend(taken, &r.taken[i]);
	if (taken == NIL)
		return 0;

	/* Nothing is stored that no slot can take: its rows would stay forever. */
	LWLockAcquire(ae_leases->lock, LW_SHARED);
	nfree = 0;
	for (i = 0; i < AE_MAX_LEASES; i++)
		if (ae_leases->leases[i].state == AE_LEASE_FREE)
			nfree++;
	foreach(lc, taken)
	{
		Taken	   *t = lfirst(lc);

		if (!(t->ok || t->pending || t->ack_pending) || ae_lease_find(t->lease.work_id) != NULL)
			continue;
		if (nfree > 0)
			nfree--;
		else
			t->ok = t->pending = t->ack_pending = false;
	}
	LWLockRelease(ae_leases->lock);
	/*
	 * Their rows and secrets were stored at the poll and the ack: even when
	 * this last write fails, the items are held, and the keeper's flush
	 * writes their heartbeats.
	 */
	stored_ok = in_xact(store_taken, taken, "store the items it took");

	/* Stored: now sessions may claim them. */
	LWLockAcquire(ae_leases->lock, LW_EXCLUSIVE);
	foreach(lc, taken)
	{
		Taken	   *t = lfirst(lc);
		AeLease    *l;

		if (!(t->ok || t->pending || t->ack_pending))
			continue;
		l = ae_lease_find(t->lease.work_id);
		if (l == NULL)
			l = free_slot();
		if (l == NULL)
			continue;			/* not reached: slots were counted above */
		*l = t->lease;
		if (t->pending || t->ack_pending)
		{
			/*
			 * Held with no heartbeat: no session can claim it until the
			 * keeper's NO_HEARTBEAT claim, sent again at once, succeeds or
			 * meets the lease the lost one set.
			 */
			TimestampTz now2 = GetCurrentTimestamp();

			l->state = AE_LEASE_READY;
			l->last_heartbeat[0] = '\0';
			l->ttl_seconds = 120;
			l->taken_at = now2;
			l->last_beat_at = now2;
			l->lease_expires_at = 0;
			l->next_beat_at = now2;
			/* A claim refused for now (a 429) set no lease to reconcile. */
			if (t->claim_maybe_acted || t->ack_pending)
				beat_unanswered(l, now2);
			l->unacked = t->ack_pending;
			l->dirty = true;
			continue;
		}
		l->state = AE_LEASE_READY;
		l->taken_at = t->claimed_at;
		l->last_beat_at = t->claimed_at;
		l->lease_expires_at = TimestampTzPlusMilliseconds(t->claimed_at, (int64) l->ttl_seconds * 1000);
		l->next_beat_at = TimestampTzPlusMilliseconds(t->claimed_at,
													  l->healthcheck ? 0 : beat_interval_ms(l->ttl_seconds));
		l->dirty = true;
		l->notify = !l->healthcheck;
	}
	LWLockRelease(ae_leases->lock);
	ConditionVariableBroadcast(&ae_leases->ready_cv);
	ae_leases_wake_keeper();
	return stored_ok ? 0 : 1000;
}

/* ------------------------------------------------------------------ main */

/* One turn of the keeper's loop; returns how long to sleep. */
static long
keeper_turn(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile long sleep_ms = 0;

	PG_TRY();
	{
		reap_dead_sessions();
		sleep_ms = keeper_round();
		(void) flush_leases();
	}
	PG_CATCH();
	{
		/* The cancel of keeper_sigterm(): keeper_stop() follows. */
		if (!keeper_stopping)
			PG_RE_THROW();
		MemoryContextSwitchTo(cxt);
		FlushErrorState();
		LWLockReleaseAll();
		AbortOutOfAnyTransaction();
		sleep_ms = 0;
	}
	PG_END_TRY();
	return sleep_ms;
}

/*
 * The loop's interrupt check.  A SIGTERM landing just before it must not
 * raise its cancel outside every PG_TRY (an exit with no last round); any
 * other cancel ends the keeper, as at any other point outside a round.
 */
static void
interrupts_or_stop(void)
{
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		CHECK_FOR_INTERRUPTS();
	}
	PG_CATCH();
	{
		if (!keeper_stopping)
			PG_RE_THROW();
		MemoryContextSwitchTo(cxt);
		FlushErrorState();
	}
	PG_END_TRY();
	if (keeper_stopping)
		keeper_stop();
}

void
ae_keeper_main(Datum arg)
{
	int			role = DatumGetInt32(arg);
	MemoryContext round_cxt;
	TimestampTz next_read = 0;
	bool		present = false;
	bool		told = false;
	bool		adopted = false;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, role == ROLE_KEEPER ? keeper_sigterm : die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(ae_sync_database, NULL, 0);

	/*
	 * A table lock on the keeper's tables (VACUUM FULL, LOCK TABLE) must
	 * not hold the beats, nor the exit, for longer than this: the write
	 * fails with a WARNING and is made again at a later round.
	 */
	SetConfigOption("lock_timeout", "500", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * Nor may a synchronous standby that is down: a commit waiting for it
	 * would hold every beat (every lease lost) and the exit for good, since
	 * SIGTERM here cancels only once.  The rows are the workers' own state;
	 * a failover that loses their latest writes reconciles like a restart.
	 */
	SetConfigOption("synchronous_commit", "local", PGC_SUSET, PGC_S_OVERRIDE);
	pgstat_report_appname(role == ROLE_KEEPER ? "anthropic_env lease keeper" : "anthropic_env work poller");

	LWLockAcquire(ae_leases->lock, LW_EXCLUSIVE);
	if (role == ROLE_KEEPER)
	{
		ae_leases->keeper_pid = MyProcPid;
		ae_leases->keeper_procno = my_procno();
	}
	else
		ae_leases->poller_procno = my_procno();
	LWLockRelease(ae_leases->lock);
	before_shmem_exit(detach, Int32GetDatum(role));
	if (role == ROLE_KEEPER)
	{
		before_shmem_exit(keeper_exit, (Datum) 0);
		ae_http_wait_hook = reap_while_sending;
	}

	round_cxt = AllocSetContextCreate(TopMemoryContext, "anthropic_env keeper round",
									  ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		long		sleep_ms = 1000;
		TimestampTz now;

		interrupts_or_stop();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		MemoryContextReset(round_cxt);
		MemoryContextSwitchTo(round_cxt);
		now = GetCurrentTimestamp();

		if (!present)
		{
			(void) in_xact(check_extension, &present, "look for the extension");
			if (!present)
			{
				if (!told)
					ereport(LOG,
							(errmsg("anthropic_env %s waits for the extension in database \"%s\"",
									role == ROLE_KEEPER ? "lease keeper" : "work poller", ae_sync_database)));
				told = true;
				sleep_ms = 2000;
				goto wait;
			}
		}

		if (role == ROLE_KEEPER)
		{
			if (!ae_leases->loaded && !in_xact(load_held, NULL, "read anthropic.held_work"))
			{
				sleep_ms = 1000;
				goto wait;
			}
			sleep_ms = keeper_turn();
		}
		else
		{
			if (!ae_leases->loaded)
			{
				sleep_ms = 100;
				goto wait;
			}
			if (!adopted)
				adopted = in_xact(adopt_unconfirmed, NULL, "read back its unconfirmed claims");
			if (now >= next_read)
			{
				/* Beyond the rows it serves, it cannot tell what is unserved. */
				if (in_xact(read_served, NULL, "read anthropic.served_environments") && !told_served)
					release_unserved();
				next_read = TimestampTzPlusMilliseconds(now, 1000);
			}
			sleep_ms = poller_round();
		}
wait:
		/*
		 * A SIGTERM whose cancel a lock wait took (ProcSleep resets the
		 * latch) must not wait out the sleep: the exit has its second.
		 */
		if (sleep_ms > 0 && !keeper_stopping)
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 sleep_ms, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
	}
}
