/*-------------------------------------------------------------------------
 *
 * redact.h
 *		Masking of keys in log lines, messages and statement texts.
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

/*
 * A palloc'd copy of text with every key known to this process masked:
 * for text the extension raises or stores (API errors, sync_runs.error).
 */
extern char *ae_redact_text(const char *text);

#endif							/* AE_REDACT_H */
