/*-------------------------------------------------------------------------
 *
 * anthropic_env.c
 *		Module initialization for anthropic_env.
 *
 * Loaded from shared_preload_libraries (needed for the sync worker) or on
 * first use.  It defines the anthropic.* settings and routes jansson's
 * allocations through palloc.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"

#include "anthropic_env.h"
#include "convert.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	ae_define_gucs();
	ae_jansson_use_palloc();
}
