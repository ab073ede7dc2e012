/*-------------------------------------------------------------------------
 *
 * redact.h
 *		Masking of keys in log lines and error messages.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AE_REDACT_H
#define AE_REDACT_H

extern void ae_redact_install(void);

#endif							/* AE_REDACT_H */
