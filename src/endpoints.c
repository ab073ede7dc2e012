/*-------------------------------------------------------------------------
 *
 * endpoints.c
 *		The names of the endpoints, shared by the API layer and statistics.
 *
 * Kept out of api.c so that statistics, which the API layer feeds, need
 * not depend on it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "endpoints.h"

static const char *const endpoint_names[AE_ENDPOINT_COUNT] = {
	[AE_ENV_CREATE] = "env_create",
	[AE_ENV_LIST] = "env_list",
	[AE_ENV_GET] = "env_get",
	[AE_ENV_UPDATE] = "env_update",
	[AE_ENV_DELETE] = "env_delete",
	[AE_ENV_ARCHIVE] = "env_archive",
	[AE_WORK_GET] = "work_get",
	[AE_WORK_POLL] = "work_poll",
	[AE_WORK_ACK] = "work_ack",
	[AE_WORK_HEARTBEAT] = "work_heartbeat",
	[AE_WORK_STOP] = "work_stop",
	[AE_WORK_LIST] = "work_list",
	[AE_WORK_UPDATE] = "work_update",
	[AE_WORK_STATS] = "work_stats",
};

const char *
ae_endpoint_name(AeEndpointId id)
{
	return endpoint_names[id];
}
