/*-------------------------------------------------------------------------
 *
 * worker.h
 *		The sync background worker and its shared state.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AE_WORKER_H
#define AE_WORKER_H

/* From _PG_init, while shared_preload_libraries is processed. */
extern void ae_worker_register(void);
extern void ae_worker_shmem_request(void);
extern void ae_worker_shmem_startup(void);

#endif							/* AE_WORKER_H */
