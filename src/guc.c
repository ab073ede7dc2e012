/*-------------------------------------------------------------------------
 *
 * guc.c
 *		The anthropic.* settings: definitions, validation and key hiding.
 *
 * Keys are passwords.  They are superuser-only to set, masked by their show
 * hook for everyone (pg_read_all_settings members included), and refused
 * when they would be stored in pg_db_role_setting, which every role can
 * read.  base_url, ca_file and max_response_bytes are superuser-only because
 * whoever controls them can redirect or starve requests that carry the key.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>
#include <limits.h>

#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "anthropic_env.h"

char	   *ae_api_key = NULL;
char	   *ae_environment_key = NULL;
char	   *ae_environment_keys_file = NULL;
char	   *ae_base_url = NULL;
char	   *ae_api_version = NULL;
char	   *ae_beta = NULL;
char	   *ae_workspace_id = NULL;
int			ae_timeout_ms = 30000;
int			ae_connect_timeout_ms = 5000;
int			ae_max_retries = 2;
int			ae_max_retry_wait_ms = 60000;
char	   *ae_ca_file = NULL;
int			ae_max_response_bytes = 64 * 1024 * 1024;
char	   *ae_sync_database = NULL;
int			ae_sync_interval_s = 300;
bool		ae_sync_work = false;
int			ae_history_retention_s = 7 * 24 * 3600;
bool		ae_log_requests = false;
bool		ae_track_requests = true;

uint64		ae_header_generation = 1;

bool		ae_preloaded = false;
void		(*ae_key_assign_hook) (const char *value) = NULL;

#define AE_DEFAULT_BASE_URL "https://api.anthropic.com"
#define AE_KEY_MASK "********"

/* Largest response we can hold in one palloc chunk. */
#define AE_MAX_RESPONSE_LIMIT ((int) (MaxAllocSize - 1))

static bool
has_control_char(const char *s)
{
	for (; *s; s++)
	{
		if (iscntrl((unsigned char) *s))
			return true;
	}
	return false;
}

static bool
is_loopback_host(const char *host, size_t len)
{
	int			parts = 0;
	int			first = -1;
	size_t		i = 0;

	if (len == 9 && pg_strncasecmp(host, "localhost", 9) == 0)
		return true;
	if (len == 5 && strncmp(host, "[::1]", 5) == 0)
		return true;

	/* Only a plain dotted quad 127.a.b.c counts; no shorthand forms. */
	while (i < len)
	{
		int			val = 0;
		size_t		start = i;

		while (i < len && isdigit((unsigned char) host[i]) && i - start < 3)
			val = val * 10 + (host[i++] - '0');
		if (i == start || val > 255)
			return false;
		if (parts == 0)
			first = val;
		parts++;
		if (i == len)
			break;
		if (host[i] != '.' || parts == 4)
			return false;
		i++;
		if (i == len)
			return false;
	}
	return parts == 4 && first == 127;
}

const char *
ae_check_base_url(const char *url)
{
	const char *p;
	const char *host;
	size_t		hostlen;
	bool		is_http;

	if (pg_strncasecmp(url, "https://", 8) == 0)
	{
		is_http = false;
		p = url + 8;
	}
	else if (pg_strncasecmp(url, "http://", 7) == 0)
	{
		is_http = true;
		p = url + 7;
	}
	else
		return "The URL must start with \"https://\" or \"http://\".";

	host = p;
	if (*p == '[')
	{
		while (*p && *p != ']')
			p++;
		if (*p != ']')
			return "The URL has an unterminated IPv6 address.";
		p++;
	}
	else
	{
		while (*p && (isalnum((unsigned char) *p) || *p == '.' || *p == '-' || *p == '_'))
			p++;
	}
	hostlen = p - host;
	if (hostlen == 0)
		return "The URL has no host.";

	if (*p == ':')
	{
		const char *port = ++p;

		while (isdigit((unsigned char) *p))
			p++;
		if (p == port || p - port > 5 || atoi(port) > 65535 || atoi(port) == 0)
			return "The URL has an invalid port.";
	}
	if (*p != '\0' && *p != '/')
		return "The URL may hold only a scheme, a host, a port and a path.";
	for (; *p; p++)
	{
		if (*p == '?' || *p == '#' || *p == '@' || *p == '\\' ||
			iscntrl((unsigned char) *p) || *p == ' ')
			return "The URL path may not hold a query, a fragment, credentials or spaces.";
	}

	if (is_http && !is_loopback_host(host, hostlen))
		return "Plain http:// is allowed only for loopback hosts (localhost, 127.0.0.0/8, [::1]); use https://.";

	return NULL;
}

/*
 * Values stored with ALTER ROLE/DATABASE ... SET land in pg_db_role_setting,
 * readable by every role; they are validated with PGC_S_TEST and applied
 * with the sources below.
 */
static bool
source_is_catalog(GucSource source)
{
	return source == PGC_S_TEST || source == PGC_S_GLOBAL ||
		source == PGC_S_DATABASE || source == PGC_S_USER ||
		source == PGC_S_DATABASE_USER;
}

static bool
check_key(char **newval, void **extra, GucSource source)
{
	if (*newval && **newval && ae_key_assign_hook)
		ae_key_assign_hook(*newval);

	/* Never let PostgreSQL's generic message quote the value. */
	if (*newval && **newval && source_is_catalog(source))
	{
		GUC_check_errcode(ERRCODE_INSUFFICIENT_PRIVILEGE);
		GUC_check_errmsg("Anthropic keys cannot be stored with ALTER ROLE, ALTER DATABASE or a function's SET clause");
		GUC_check_errdetail("Every role can read settings stored in pg_db_role_setting and pg_proc.");
		GUC_check_errhint("Set the key in postgresql.conf, with ALTER SYSTEM, or in the server's environment (ANTHROPIC_API_KEY).");
		return false;
	}
	if (*newval && has_control_char(*newval))
	{
		GUC_check_errmsg("Anthropic keys cannot contain control characters");
		return false;
	}
	return true;
}

static const char *
show_key(char *value)
{
	return (value && *value) ? AE_KEY_MASK : "";
}

static const char *
show_api_key(void)
{
	return show_key(ae_api_key);
}

static const char *
show_environment_key(void)
{
	return show_key(ae_environment_key);
}

static void
assign_header_setting(const char *newval, void *extra)
{
	ae_header_generation++;
}

static bool
check_header_value(char **newval, void **extra, GucSource source)
{
	if (*newval && has_control_char(*newval))
	{
		GUC_check_errdetail("HTTP header values cannot contain control characters such as carriage return or line feed.");
		return false;
	}
	return true;
}

static bool
check_base_url(char **newval, void **extra, GucSource source)
{
	const char *msg;

	if (*newval == NULL || **newval == '\0')
		return true;			/* the default applies */
	msg = ae_check_base_url(*newval);
	if (msg)
	{
		GUC_check_errdetail("%s", msg);
		return false;
	}
	return true;
}

const char *
ae_effective_api_key(void)
{
	const char *env;

	if (ae_api_key && *ae_api_key)
		return ae_api_key;
	env = getenv("ANTHROPIC_API_KEY");
	if (env && *env && !has_control_char(env))
		return env;
	return NULL;
}

const char *
ae_effective_environment_key(void)
{
	if (ae_environment_key && *ae_environment_key)
		return ae_environment_key;
	return NULL;
}

void
ae_define_gucs(void)
{
	const char *env_url = getenv("ANTHROPIC_BASE_URL");
	const char *boot_url = AE_DEFAULT_BASE_URL;

	if (env_url && *env_url && ae_check_base_url(env_url) == NULL)
		boot_url = env_url;

	DefineCustomStringVariable("anthropic.api_key",
							   "API key sent as x-api-key.",
							   "Empty means: use the server's ANTHROPIC_API_KEY environment variable.",
							   &ae_api_key, "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							   check_key, assign_header_setting, show_api_key);

	DefineCustomStringVariable("anthropic.environment_key",
							   "Environment key sent as a Bearer token by the work queue calls that take it.",
							   "Empty means: use the API key.",
							   &ae_environment_key, "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							   check_key, assign_header_setting, show_environment_key);

	/* Not a key itself, but superuser-only: it says where the keys are. */
	DefineCustomStringVariable("anthropic.environment_keys_file",
							   "File of per-environment keys: lines of \"environment_id key\".",
							   "Must be owned by the server's user with mode 0600; empty sends anthropic.environment_key to every environment.",
							   &ae_environment_keys_file, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   check_header_value, NULL, NULL);

	DefineCustomStringVariable("anthropic.base_url",
							   "Base URL of the Anthropic API.",
							   "Plain http:// is accepted only for loopback hosts.",
							   &ae_base_url, boot_url,
							   PGC_SUSET, GUC_SUPERUSER_ONLY,
							   check_base_url, assign_header_setting, NULL);

	DefineCustomStringVariable("anthropic.api_version",
							   "Value of the anthropic-version header.",
							   NULL,
							   &ae_api_version, "2023-06-01",
							   PGC_USERSET, 0,
							   check_header_value, assign_header_setting, NULL);

	DefineCustomStringVariable("anthropic.beta",
							   "Value of the anthropic-beta header.",
							   "Extra betas go first, comma-separated, before managed-agents-2026-04-01.",
							   &ae_beta, "managed-agents-2026-04-01",
							   PGC_USERSET, 0,
							   check_header_value, assign_header_setting, NULL);

	DefineCustomStringVariable("anthropic.workspace_id",
							   "Workspace sent as anthropic-workspace-id; empty sends none.",
							   NULL,
							   &ae_workspace_id, "",
							   PGC_USERSET, 0,
							   check_header_value, assign_header_setting, NULL);

	DefineCustomIntVariable("anthropic.timeout_ms",
							"Total time allowed for one attempt of a request.",
							"A long poll adds its block_ms.",
							&ae_timeout_ms, 30000, 1, INT_MAX / 2,
							PGC_USERSET, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("anthropic.connect_timeout_ms",
							"Time allowed to open a connection.",
							NULL,
							&ae_connect_timeout_ms, 5000, 1, INT_MAX / 2,
							PGC_USERSET, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("anthropic.max_retries",
							"Retries after a failed attempt, as the official SDKs do.",
							NULL,
							&ae_max_retries, 2, 0, 10,
							PGC_USERSET, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("anthropic.max_retry_wait",
							"Longest retry-after or retry-after-ms a call waits for.",
							"A server asking for a longer wait fails the call at once.",
							&ae_max_retry_wait_ms, 60000, 0, INT_MAX,
							PGC_USERSET, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomStringVariable("anthropic.ca_file",
							   "Extra CA bundle used to verify the API's certificate.",
							   "Empty uses the system trust store.",
							   &ae_ca_file, "",
							   PGC_SUSET, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("anthropic.max_response_bytes",
							"Largest response body accepted.",
							NULL,
							&ae_max_response_bytes, 64 * 1024 * 1024, 1024, AE_MAX_RESPONSE_LIMIT,
							PGC_SUSET, GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	/* A postmaster setting can only be defined while preloading. */
	if (process_shared_preload_libraries_in_progress)
		DefineCustomStringVariable("anthropic.sync_database",
								   "Database the sync background worker connects to; empty disables it.",
								   NULL,
								   &ae_sync_database, "",
								   PGC_POSTMASTER, 0,
								   NULL, NULL, NULL);

	DefineCustomIntVariable("anthropic.sync_interval",
							"Time between two runs of the sync worker.",
							NULL,
							&ae_sync_interval_s, 300, 1, INT_MAX / 1000,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("anthropic.sync_work",
							 "Also mirror work items and queue statistics of self-hosted environments.",
							 NULL,
							 &ae_sync_work, false,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("anthropic.history_retention",
							"Age after which sync_runs and queue statistics history are pruned; 0 keeps them forever.",
							NULL,
							&ae_history_retention_s, 7 * 24 * 3600, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("anthropic.log_requests",
							 "Logs each request attempt at LOG: method, path, status, attempt, time, request id.",
							 "Headers and bodies are never logged.",
							 &ae_log_requests, false,
							 PGC_SUSET, 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("anthropic.track_requests",
							 "Collects per-endpoint statistics for anthropic.request_stats.",
							 NULL,
							 &ae_track_requests, true,
							 PGC_SUSET, 0,
							 NULL, NULL, NULL);

	MarkGUCPrefixReserved("anthropic");
}
