/*-------------------------------------------------------------------------
 *
 * envkeys.h
 *		Per-environment keys from anthropic.environment_keys_file.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AE_ENVKEYS_H
#define AE_ENVKEYS_H

/*
 * The key the work calls of this environment send: its line in the keys
 * file, or NULL when it has none (anthropic.environment_key, else the API
 * key, stands in).  Rereads the file when it changed; a file that is not
 * owned by the server's user or is readable by others is refused with a
 * WARNING, once per change.
 */
extern const char *ae_envkeys_lookup(const char *environment_id);

/*
 * Installs an emit_log_hook that rereads a changed file, without any
 * message, before the redaction hook runs; call after ae_redact_install().
 */
extern void ae_envkeys_install(void);

#endif							/* AE_ENVKEYS_H */
