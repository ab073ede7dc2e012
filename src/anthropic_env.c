/*-------------------------------------------------------------------------
 *
 * anthropic_env.c
 *		Module initialization for anthropic_env.
 *
 * Meant to be loaded from shared_preload_libraries: only then is the
 * masking of keys in place in every process, the postmaster's reload
 * messages included, and only then is the key setting's check hook there to
 * refuse ALTER ROLE ... SET of a key.  Loaded on first use instead, it
 * warns and sends no request (api.c).  It defines the anthropic.*
 * settings, routes jansson's allocations through palloc, installs the
 * masking hooks and, when preloaded, asks for shared memory and registers
 * the workers.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"

#include "anthropic_env.h"
#include "convert.h"
#include "envkeys.h"
#include "keeper.h"
#include "keycheck.h"
#include "leases.h"
#include "redact.h"
#include "stats.h"
#include "worker.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
ae_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	ae_worker_shmem_request();
	ae_leases_shmem_request();
	ae_stats_shmem_request();
}

static void
ae_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	ae_worker_shmem_startup();
	ae_leases_shmem_startup();
	ae_stats_shmem_startup();
}

void
_PG_init(void)
{
	ae_define_gucs();
	ae_jansson_use_palloc();
	ae_redact_install();
	ae_envkeys_install();

	if (!process_shared_preload_libraries_in_progress)
	{
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("anthropic_env is not loaded through shared_preload_libraries"),
				 errdetail("Without it PostgreSQL can write keys to the server log and pg_db_role_setting, so no request will be sent."),
				 errhint("Add anthropic_env to shared_preload_libraries in postgresql.conf and restart the server.")));
		return;
	}
	ae_preloaded = true;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = ae_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = ae_shmem_startup;
	ae_worker_register();
	ae_keeper_register();
	ae_keycheck_register();
}
