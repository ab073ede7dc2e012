/*-------------------------------------------------------------------------
 *
 * anthropic_env.c
 *		Module initialization for anthropic_env.
 *
 * Loaded from shared_preload_libraries (needed for the sync worker and its
 * shared state) or on first use.  It defines the anthropic.* settings,
 * routes jansson's allocations through palloc, installs the hook that
 * keeps keys out of log lines and, when preloaded, asks for shared memory
 * and registers the sync worker.
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
		return;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = ae_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = ae_shmem_startup;
	ae_worker_register();
	ae_keeper_register();
}
