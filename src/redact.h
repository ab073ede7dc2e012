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

/*
 * Adds a value to mask wherever it appears, for keys that are not
 * settings (anthropic.environment_keys_file).  The value is copied.
 */
extern void ae_redact_register_secret(const char *value);

#endif							/* AE_REDACT_H */
