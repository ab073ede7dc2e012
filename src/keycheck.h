/*-------------------------------------------------------------------------
 *
 * keycheck.h
 *		The startup check for keys stored in pg_db_role_setting.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AE_KEYCHECK_H
#define AE_KEYCHECK_H

extern void ae_keycheck_register(void);

#endif							/* AE_KEYCHECK_H */
