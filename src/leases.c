/*-------------------------------------------------------------------------
 *
 * leases.c
 *		The shared lease table (see leases.h).
 *
 * One LWLock guards the whole table: every operation on it is a scan of
 * at most AE_MAX_LEASES small slots, far cheaper than the request it
 * follows or precedes.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
/* get_database_name() moved from dbcommands.h to lsyscache.h in 19. */
#if PG_VERSION_NUM >= 190000
#include "utils/lsyscache.h"
#else
#include "commands/dbcommands.h"
#endif

#include "anthropic_env.h"
#include "leases.h"

AeLeaseTable *ae_leases = NULL;

void
ae_leases_shmem_request(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(AeLeaseTable)));
	RequestNamedLWLockTranche("anthropic_env leases", 1);
}

void
ae_leases_shmem_startup(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	ae_leases = ShmemInitStruct("anthropic_env leases", sizeof(AeLeaseTable), &found);
	if (!found)
	{
		memset(ae_leases, 0, sizeof(AeLeaseTable));
		ae_leases->lock = &(GetNamedLWLockTranche("anthropic_env leases"))->lock;
		ConditionVariableInit(&ae_leases->ready_cv);
		ae_leases->keeper_procno = -1;
		ae_leases->poller_procno = -1;
	}
	LWLockRelease(AddinShmemInitLock);
}

void
ae_leases_require(void)
{
	if (ae_leases == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the anthropic_env lease keeper is not available"),
				 errhint("Add anthropic_env to shared_preload_libraries and set anthropic.sync_database.")));

	/*
	 * The lease table is cluster-wide but the keeper's tables, the secrets
	 * among them, live in one database only: a claim made elsewhere would
	 * hand out an item without its secret.
	 */
	if (ae_sync_database == NULL || ae_sync_database[0] == '\0' ||
		strcmp(ae_sync_database, get_database_name(MyDatabaseId)) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the anthropic_env lease keeper does not run in database \"%s\"",
						get_database_name(MyDatabaseId)),
				 errdetail("anthropic.sync_database is \"%s\".",
						   ae_sync_database ? ae_sync_database : ""),
				 errhint("Call the keeper's functions in the database named by anthropic.sync_database.")));
}

AeLease *
ae_lease_find(const char *work_id)
{
	int			i;

	for (i = 0; i < AE_MAX_LEASES; i++)
	{
		AeLease    *l = &ae_leases->leases[i];

		if (l->state != AE_LEASE_FREE && strcmp(l->work_id, work_id) == 0)
			return l;
	}
	return NULL;
}

void
ae_lease_strcpy(char *dst, const char *src, size_t size)
{
	size_t		len;

	Assert(size > 0);
	if (src == NULL)
	{
		dst[0] = '\0';
		return;
	}
	len = strlen(src);
	if (len >= size)
		len = pg_mbcliplen(src, (int) len, (int) size - 1);
	memcpy(dst, src, len);
	dst[len] = '\0';
}

const char *
ae_lease_state_name(AeLeaseState state)
{
	switch (state)
	{
		case AE_LEASE_READY:
			return "ready";
		case AE_LEASE_CLAIMED:
			return "claimed";
		case AE_LEASE_STOP_REQUESTED:
			return "stop_requested";
		case AE_LEASE_FINISHED:
			return "finished";
		case AE_LEASE_LOST:
			return "lost";
		case AE_LEASE_FREE:
			break;
	}
	return "free";
}

static void
wake(int procno)
{
	if (procno >= 0)
		SetLatch(&ProcGlobal->allProcs[procno].procLatch);
}

void
ae_leases_wake_keeper(void)
{
	if (ae_leases)
		wake(ae_leases->keeper_procno);
}

void
ae_leases_wake_poller(void)
{
	if (ae_leases)
		wake(ae_leases->poller_procno);
}
