/*-------------------------------------------------------------------------
 *
 * endpoints.h
 *		The endpoints of the API, by number and name.
 *
 * Kept apart from api.h so that files which cannot include jansson.h
 * (those that need utils/builtins.h) can name endpoints too.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AE_ENDPOINTS_H
#define AE_ENDPOINTS_H

typedef enum AeEndpointId
{
	AE_ENV_CREATE,
	AE_ENV_LIST,
	AE_ENV_GET,
	AE_ENV_UPDATE,
	AE_ENV_DELETE,
	AE_ENV_ARCHIVE,
	AE_WORK_GET,
	AE_WORK_POLL,
	AE_WORK_ACK,
	AE_WORK_HEARTBEAT,
	AE_WORK_STOP,
	AE_WORK_LIST,
	AE_WORK_UPDATE,
	AE_WORK_STATS,
	AE_ENDPOINT_COUNT
} AeEndpointId;

/* Name of an endpoint, as SQL knows it ("env_get"). */
extern const char *ae_endpoint_name(AeEndpointId id);

#endif							/* AE_ENDPOINTS_H */
