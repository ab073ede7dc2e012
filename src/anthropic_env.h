/*-------------------------------------------------------------------------
 *
 * anthropic_env.h
 *		Settings (GUC variables) shared by every layer of anthropic_env.
 *
 * The variables are defined in guc.c; the layers read them directly.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ANTHROPIC_ENV_H
#define ANTHROPIC_ENV_H

#define AE_VERSION_STRING "0.2.0"

extern char *ae_api_key;
extern char *ae_environment_key;
extern char *ae_environment_keys_file;
extern char *ae_base_url;
extern char *ae_api_version;
extern char *ae_beta;
extern char *ae_workspace_id;
extern int	ae_timeout_ms;
extern int	ae_connect_timeout_ms;
extern int	ae_max_retries;
extern int	ae_max_retry_wait_ms;
extern char *ae_ca_file;
extern int	ae_max_response_bytes;
extern char *ae_sync_database;
extern int	ae_sync_interval_s;
extern bool ae_sync_work;
extern int	ae_history_retention_s;
extern bool ae_log_requests;
extern bool ae_track_requests;

/*
 * Bumped whenever a setting that goes into request headers changes, so the
 * transport rebuilds its cached header strings only then.
 */
extern uint64 ae_header_generation;

/* Loaded from shared_preload_libraries: required before any key is sent. */
extern bool ae_preloaded;

/*
 * Called by the key settings' check hook with every value being assigned,
 * before it is validated, so that it is masked from then on; set by the
 * masking layer (redact.c), which sits above the settings.
 */
extern void (*ae_key_assign_hook) (const char *value);

extern void ae_define_gucs(void);

/* The API key in force: the GUC, else the server's ANTHROPIC_API_KEY. */
extern const char *ae_effective_api_key(void);

/* The environment key in force, or NULL when the API key stands in. */
extern const char *ae_effective_environment_key(void);

/* Validates a base URL; returns NULL when good, else a static message. */
extern const char *ae_check_base_url(const char *url);

#endif							/* ANTHROPIC_ENV_H */
