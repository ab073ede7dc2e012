/*-------------------------------------------------------------------------
 *
 * stats.h
 *		Request statistics per endpoint, behind anthropic.request_stats.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AE_STATS_H
#define AE_STATS_H

#include "utils/timestamp.h"

/* Outcome classes of one call, after its retries. */
#define AE_OUTCOME_TRANSPORT (-1)

extern void ae_stats_shmem_request(void);
extern void ae_stats_shmem_startup(void);

/*
 * Records one call of an endpoint: its final HTTP status (or
 * AE_OUTCOME_TRANSPORT), the retries it took, its duration and the bytes
 * moved over all attempts, and the last request id seen.
 */
extern void ae_stats_record(int endpoint, long status, int retries, int64 elapsed_us,
							uint64 bytes_sent, uint64 bytes_received,
							const char *request_id);

#endif							/* AE_STATS_H */
