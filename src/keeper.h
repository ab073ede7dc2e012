/*-------------------------------------------------------------------------
 *
 * keeper.h
 *		The lease keeper's background workers.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AE_KEEPER_H
#define AE_KEEPER_H

/* From _PG_init, while shared_preload_libraries is processed. */
extern void ae_keeper_register(void);

#endif							/* AE_KEEPER_H */
