/*-------------------------------------------------------------------------
 *
 * leases.h
 *		The shared lease table: every work item the database holds, and
 *		the sessions waiting for one.
 *
 * Lives below both the SQL functions that claim and finish items
 * (claim.c) and the lease keeper that polls and beats (keeper.c).  It
 * holds only values (ids, pids, times), never a pointer, and never the
 * item's secret, which stays in an UNLOGGED table.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AE_LEASES_H
#define AE_LEASES_H

#include "datatype/timestamp.h"
#include "storage/condition_variable.h"
#include "storage/lwlock.h"

#define AE_MAX_LEASES 1024
#define AE_MAX_WAITERS 256
#define AE_ID_LEN 128
#define AE_HB_LEN 128

typedef enum AeLeaseState
{
	AE_LEASE_FREE = 0,			/* unused slot */
	AE_LEASE_READY,
	AE_LEASE_CLAIMED,
	AE_LEASE_STOP_REQUESTED,
	AE_LEASE_FINISHED,
	AE_LEASE_LOST
} AeLeaseState;

typedef struct AeLease
{
	AeLeaseState state;
	char		work_id[AE_ID_LEN];
	char		environment_id[AE_ID_LEN];
	char		data_type[64];
	char		data_id[AE_ID_LEN];
	char		consumer[64];
	int			claimed_pid;	/* 0: no session holds it */
	TimestampTz taken_at;
	TimestampTz claimed_at;
	TimestampTz last_beat_at;	/* last successful beat */
	TimestampTz next_beat_at;	/* when the keeper beats next */
	TimestampTz lease_expires_at;
	TimestampTz stop_sent_at;
	TimestampTz done_at;		/* finished or lost */
	char		last_heartbeat[AE_HB_LEN];	/* echoed verbatim */
	int			ttl_seconds;
	char		remote_state[16];
	char		error[256];
	bool		healthcheck;
	bool		notify;			/* the keeper owes a NOTIFY */
	bool		dirty;			/* the keeper owes a write to held_work */
	int			stop_failures;
	int			finishing_pid;	/* a session past its finish's last check */
	bool		beat_maybe_acted;	/* the last beat (or claim) went unanswered;
									 * kept in held_work.beat_unanswered */
	TimestampTz maybe_acted_at;	/* when the latest of those went out (or
								 * later); 0 if unknown */
	bool		resumed;		/* read back after a restart, not beaten since */
	bool		unacked;		/* polled, its ack's answer not seen: the
								 * keeper acks it before the claim */
} AeLease;

typedef struct AeWaiter
{
	int			pid;			/* 0: free */
	char		environment_id[AE_ID_LEN];
} AeWaiter;

typedef struct AeLeaseTable
{
	LWLock	   *lock;
	ConditionVariable ready_cv; /* broadcast when an item becomes ready */
	bool		loaded;			/* held_work was read since the server started */
	TimestampTz loaded_at;		/* when it was read */
	int			keeper_pid;
	int			keeper_procno;	/* -1: no keeper */
	int			poller_procno;	/* -1: no poller */
	AeWaiter	waiters[AE_MAX_WAITERS];
	AeLease		leases[AE_MAX_LEASES];
} AeLeaseTable;

extern AeLeaseTable *ae_leases;

extern void ae_leases_shmem_request(void);
extern void ae_leases_shmem_startup(void);

/*
 * Raises unless the library was preloaded (no shared lease table) and this
 * is the database of anthropic.sync_database, where the keeper runs.
 */
extern void ae_leases_require(void);

/* With the lock held: the slot of a work id, or NULL. */
extern AeLease *ae_lease_find(const char *work_id);

/*
 * strlcpy that cuts src at a character boundary of the server encoding,
 * so a long text never ends in half a character.
 */
extern void ae_lease_strcpy(char *dst, const char *src, size_t size);

/* Text of a state, as the leases view shows it. */
extern const char *ae_lease_state_name(AeLeaseState state);

/* Wakes the keeper, or the poller. */
extern void ae_leases_wake_keeper(void);
extern void ae_leases_wake_poller(void);

#endif							/* AE_LEASES_H */
