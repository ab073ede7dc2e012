/*-------------------------------------------------------------------------
 *
 * http.c
 *		Transport layer: libcurl, headers, timeouts, interrupts, retries.
 *
 * One easy handle and one multi handle live for the whole backend, so a
 * session keeps its TCP/TLS connection to the API (the connection cache is
 * the multi handle's).  Transfers are driven through the multi interface
 * in short polls so that a query cancel, statement_timeout or backend
 * termination is seen within a few tens of milliseconds; backoff sleeps
 * wait on the process latch for the same reason.
 *
 * The static request headers are cached strings, rebuilt only when a
 * setting that feeds them changes; each request chains them together with
 * its few variable headers in curl_slist nodes on the stack, so a call
 * allocates nothing for headers.
 *
 * The response body is collected into memory of the caller's context; it
 * never grows past anthropic.max_response_bytes.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>
#include <math.h>
#include <time.h>

#include "common/pg_prng.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "anthropic_env.h"
#include "http.h"
#include "stats.h"

/* How often a running transfer looks at pending interrupts. */
#define AE_POLL_INTERVAL_MS 20

/* Retry-After values are honoured up to this long (as the SDKs do). */
#define AE_MAX_RETRY_AFTER_MS 2147483647.0

/*
 * The wait event a backend shows in pg_stat_activity while a request is
 * in flight: "Extension" before PostgreSQL 17, a named one from 17 on.
 */
static uint32
request_wait_event(void)
{
#if PG_VERSION_NUM >= 170000
	static uint32 event = 0;

	if (event == 0)
		event = WaitEventExtensionNew("AnthropicApiRequest");
	return event;
#else
	return PG_WAIT_EXTENSION;
#endif
}

static CURLM *ae_multi = NULL;
static CURL *ae_easy = NULL;
static char ae_curl_errbuf[CURL_ERROR_SIZE];

/* The CA file the easy handle was configured with ("" for none). */
static char *ae_applied_ca_file = NULL;

/* Cached header lines, owned by TopMemoryContext. */
typedef struct AeHeaderCache
{
	uint64		generation;
	const char *api_key_source; /* identity of the key the lines were made from */
	const char *env_key_source;
	char	   *version;
	char	   *beta;
	char	   *workspace;		/* NULL when no workspace is set */
	char	   *api_key;		/* NULL when no key is configured */
	char	   *bearer;			/* NULL when no environment key is set */
	char	   *base_url;		/* base URL without a trailing slash */
} AeHeaderCache;

static AeHeaderCache ae_headers = {0};

typedef struct AeBodyBuffer
{
	MemoryContext cxt;
	char	   *data;
	size_t		len;
	size_t		cap;
	size_t		limit;
	bool		too_large;
	bool		out_of_memory;
} AeBodyBuffer;

static size_t
body_write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	AeBodyBuffer *buf = (AeBodyBuffer *) userdata;
	size_t		n = size * nmemb;

	if (buf->len + n > buf->limit)
	{
		buf->too_large = true;
		return 0;
	}
	if (buf->len + n + 1 > buf->cap)
	{
		size_t		newcap = Max(buf->cap * 2, buf->len + n + 1);
		char	   *newdata;

		newcap = Max(newcap, 8192);
		newcap = Min(newcap, buf->limit + 1);
		/* palloc would longjmp through libcurl on failure; ask for NULL. */
		newdata = MemoryContextAllocExtended(buf->cxt, newcap, MCXT_ALLOC_NO_OOM);
		if (newdata == NULL)
		{
			buf->out_of_memory = true;
			return 0;
		}
		if (buf->len > 0)
			memcpy(newdata, buf->data, buf->len);
		if (buf->data)
			pfree(buf->data);
		buf->data = newdata;
		buf->cap = newcap;
	}
	memcpy(buf->data + buf->len, ptr, n);
	buf->len += n;
	return n;
}

static void
configure_static_options(CURL *easy)
{
	curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, ae_curl_errbuf);
	curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(easy, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
	/* Proxies from the server's environment could see the key: none. */
	curl_easy_setopt(easy, CURLOPT_PROXY, "");
	curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(easy, CURLOPT_USERAGENT, "anthropic_env/" AE_VERSION_STRING);
	curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, body_write_cb);
	if (ae_ca_file && *ae_ca_file)
		curl_easy_setopt(easy, CURLOPT_CAINFO, ae_ca_file);
	if (ae_applied_ca_file)
		pfree(ae_applied_ca_file);
	ae_applied_ca_file = MemoryContextStrdup(TopMemoryContext,
											 ae_ca_file ? ae_ca_file : "");
}

static void
ensure_handles(void)
{
	if (ae_multi != NULL)
		return;

	if (curl_global_init(CURL_GLOBAL_ALL) != CURLE_OK)
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("could not initialize libcurl")));
	ae_easy = curl_easy_init();
	ae_multi = curl_multi_init();
	if (ae_easy == NULL || ae_multi == NULL)
	{
		if (ae_easy)
			curl_easy_cleanup(ae_easy);
		if (ae_multi)
			curl_multi_cleanup(ae_multi);
		ae_easy = NULL;
		ae_multi = NULL;
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl handle")));
	}
	configure_static_options(ae_easy);
}

/* Forgets per-transfer state; keeps the connection cache (in the multi). */
static void
reset_easy_handle(void)
{
	curl_easy_reset(ae_easy);
	configure_static_options(ae_easy);
}

static char *
header_line(const char *name, const char *value)
{
	return MemoryContextStrdup(TopMemoryContext, psprintf("%s: %s", name, value));
}

static void
free_if(char **p)
{
	if (*p)
	{
		/* Scrub key material before the memory is reused. */
		explicit_bzero(*p, strlen(*p));
		pfree(*p);
		*p = NULL;
	}
}

static void
refresh_header_cache(void)
{
	const char *api_key = ae_effective_api_key();
	const char *env_key = ae_effective_environment_key();
	size_t		n;

	if (ae_headers.generation == ae_header_generation &&
		ae_headers.api_key_source == api_key &&
		ae_headers.env_key_source == env_key)
		return;

	free_if(&ae_headers.version);
	free_if(&ae_headers.beta);
	free_if(&ae_headers.workspace);
	free_if(&ae_headers.api_key);
	free_if(&ae_headers.bearer);
	free_if(&ae_headers.base_url);

	ae_headers.version = header_line("anthropic-version", ae_api_version);
	ae_headers.beta = header_line("anthropic-beta", ae_beta);
	if (ae_workspace_id && *ae_workspace_id)
		ae_headers.workspace = header_line("anthropic-workspace-id", ae_workspace_id);
	if (api_key)
		ae_headers.api_key = header_line("x-api-key", api_key);
	if (env_key)
		ae_headers.bearer = header_line("Authorization", psprintf("Bearer %s", env_key));

	ae_headers.base_url = MemoryContextStrdup(TopMemoryContext, ae_base_url);
	n = strlen(ae_headers.base_url);
	while (n > 0 && ae_headers.base_url[n - 1] == '/')
		ae_headers.base_url[--n] = '\0';

	ae_headers.generation = ae_header_generation;
	ae_headers.api_key_source = api_key;
	ae_headers.env_key_source = env_key;
}

static void
check_request_allowed(const AeHttpRequest *req)
{
	const char *msg = ae_check_base_url(ae_base_url);

	if (msg)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("anthropic.base_url is not allowed"),
				 errdetail("%s", msg)));
	if (ae_headers.api_key == NULL &&
		!(req->credential == AE_CRED_ENVIRONMENT && ae_headers.bearer != NULL))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("no Anthropic API key is configured"),
				 errhint("Set anthropic.api_key in postgresql.conf or with ALTER SYSTEM, or ANTHROPIC_API_KEY in the server's environment.")));
}

/*
 * Sleeps on the latch so that cancel and termination end the wait at once.
 */
static void
interruptible_sleep(long ms)
{
	TimestampTz end = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);

	for (;;)
	{
		long		left;

		CHECK_FOR_INTERRUPTS();
		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), end);
		if (left <= 0)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 left, request_wait_event());
		ResetLatch(MyLatch);
	}
}

static const char *
response_header(const char *name)
{
	struct curl_header *h;

	if (curl_easy_header(ae_easy, name, 0, CURLH_HEADER, -1, &h) == CURLHE_OK)
		return h->value;
	return NULL;
}

/* Delay before retry number retries+1, honouring the server's wishes. */
static long
retry_delay_ms(bool have_response, int retries)
{
	double		delay = -1;

	if (have_response)
	{
		const char *ms = response_header("retry-after-ms");
		const char *s = response_header("retry-after");
		char	   *end;

		if (ms)
		{
			double		v = strtod(ms, &end);

			if (end != ms && *end == '\0' && isfinite(v))
				delay = v;
		}
		if (delay <= 0 && s)
		{
			double		v = strtod(s, &end);

			if (end != s && *end == '\0' && isfinite(v))
				delay = v * 1000.0;
			else
			{
				time_t		t = curl_getdate(s, NULL);

				if (t > 0)
					delay = difftime(t, time(NULL)) * 1000.0;
			}
		}
	}
	if (!(delay > 0 && delay <= AE_MAX_RETRY_AFTER_MS))
	{
		double		base = Min(0.5 * pow(2.0, retries), 8.0);

		delay = base * (1.0 - pg_prng_double(&pg_global_prng_state) * 0.25) * 1000.0;
	}
	return (long) ceil(delay);
}

/* Transport errors after which the server cannot have seen the request. */
static bool
nothing_was_sent(CURLcode rc)
{
	return rc == CURLE_COULDNT_CONNECT ||
		rc == CURLE_COULDNT_RESOLVE_HOST ||
		rc == CURLE_COULDNT_RESOLVE_PROXY;
}

/* Transport errors that a retry cannot cure. */
static bool
permanent_transport_error(CURLcode rc)
{
	return rc == CURLE_PEER_FAILED_VERIFICATION ||
		rc == CURLE_SSL_CACERT_BADFILE ||
		rc == CURLE_SSL_CERTPROBLEM ||
		rc == CURLE_UNSUPPORTED_PROTOCOL ||
		rc == CURLE_URL_MALFORMAT ||
		rc == CURLE_WRITE_ERROR ||
		rc == CURLE_OUT_OF_MEMORY;
}

static bool
status_is_retryable(long status, AeRetryClass retry)
{
	if (retry == AE_RETRY_CREATE)
		return status == 429 || status == 503 || status == 529;
	return status == 408 || status == 409 || status == 429 || status >= 500;
}

/*
 * Runs one attempt.  The transfer is polled in short slices so that
 * CHECK_FOR_INTERRUPTS can end it; the handle then leaves the multi
 * handle, which closes a half-used connection.
 */
static CURLcode
perform_once(void)
{
	volatile CURLcode result = CURLE_OK;
	volatile bool done = false;

	curl_multi_add_handle(ae_multi, ae_easy);
	pgstat_report_wait_start(request_wait_event());
	PG_TRY();
	{
		while (!done)
		{
			int			running = 0;
			CURLMcode	mc;
			CURLMsg    *msg;
			int			left;

			CHECK_FOR_INTERRUPTS();
			mc = curl_multi_perform(ae_multi, &running);
			if (mc != CURLM_OK)
			{
				result = CURLE_RECV_ERROR;
				snprintf(ae_curl_errbuf, sizeof(ae_curl_errbuf), "%s",
						 curl_multi_strerror(mc));
				break;
			}
			while ((msg = curl_multi_info_read(ae_multi, &left)) != NULL)
			{
				if (msg->msg == CURLMSG_DONE && msg->easy_handle == ae_easy)
				{
					result = msg->data.result;
					done = true;
				}
			}
			if (!done && running == 0)
			{
				/* Finished without a DONE message: treat as a broken transfer. */
				result = CURLE_RECV_ERROR;
				break;
			}
			if (!done)
				(void) curl_multi_poll(ae_multi, NULL, 0, AE_POLL_INTERVAL_MS, NULL);
		}
	}
	PG_FINALLY();
	{
		pgstat_report_wait_end();
		curl_multi_remove_handle(ae_multi, ae_easy);
	}
	PG_END_TRY();

	return result;
}

static void
raise_transport_error(CURLcode rc, int attempts, long timeout_ms)
{
	const char *detail = ae_curl_errbuf[0] ? ae_curl_errbuf : curl_easy_strerror(rc);
	const char *what;

	switch (rc)
	{
		case CURLE_OPERATION_TIMEDOUT:
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("Anthropic API request timed out after %ld ms", timeout_ms),
					 errdetail("Attempts: %d. %s", attempts, detail)));
			break;
		case CURLE_COULDNT_CONNECT:
		case CURLE_COULDNT_RESOLVE_HOST:
			what = "could not connect to the Anthropic API";
			break;
		case CURLE_PEER_FAILED_VERIFICATION:
		case CURLE_SSL_CACERT_BADFILE:
		case CURLE_SSL_CONNECT_ERROR:
			what = "could not establish a verified TLS connection to the Anthropic API";
			break;
		case CURLE_GOT_NOTHING:
		case CURLE_RECV_ERROR:
		case CURLE_SEND_ERROR:
		case CURLE_PARTIAL_FILE:
			what = "connection to the Anthropic API was lost";
			break;
		default:
			what = "Anthropic API request failed in transport";
			break;
	}
	ereport(ERROR,
			(errcode(ERRCODE_CONNECTION_FAILURE),
			 errmsg("%s", what),
			 errdetail("Attempts: %d. %s", attempts, detail)));
}

/* anthropic.log_requests: one line per attempt, never headers or bodies. */
static void
log_attempt(const AeHttpRequest *req, CURLcode rc, long status, int attempt,
			TimestampTz started, const char *request_id)
{
	long		secs;
	int			usecs;
	int			pathlen = (int) strcspn(req->path, "?");

	TimestampDifference(started, GetCurrentTimestamp(), &secs, &usecs);
	if (rc == CURLE_OK)
		ereport(LOG,
				(errmsg("anthropic_env request %s %.*s: status %ld, attempt %d, %.1f ms, request id %s",
						req->method_name, pathlen, req->path, status, attempt,
						secs * 1000.0 + usecs / 1000.0, request_id ? request_id : "none"),
				 errhidestmt(true), errhidecontext(true)));
	else
		ereport(LOG,
				(errmsg("anthropic_env request %s %.*s: %s, attempt %d, %.1f ms",
						req->method_name, pathlen, req->path, curl_easy_strerror(rc), attempt,
						secs * 1000.0 + usecs / 1000.0),
				 errhidestmt(true), errhidecontext(true)));
}

/* Bytes of one attempt, headers included, as libcurl counted them. */
static void
count_bytes(const AeBodyBuffer *body, uint64 *sent, uint64 *received)
{
	long		req_size = 0;
	long		hdr_size = 0;
	curl_off_t	upload = 0;

	curl_easy_getinfo(ae_easy, CURLINFO_REQUEST_SIZE, &req_size);
	curl_easy_getinfo(ae_easy, CURLINFO_SIZE_UPLOAD_T, &upload);
	curl_easy_getinfo(ae_easy, CURLINFO_HEADER_SIZE, &hdr_size);
	*sent += (uint64) req_size + (uint64) upload;
	*received += (uint64) hdr_size + body->len;
}

static int64
elapsed_us(TimestampTz since)
{
	return (int64) (GetCurrentTimestamp() - since);
}

void
ae_http_execute(const AeHttpRequest *req, AeHttpResponse *resp)
{
	struct curl_slist nodes[8];
	struct curl_slist *headers = NULL;
	int			nnodes = 0;
	char	   *url;
	long		timeout_ms;
	int			attempt;
	AeBodyBuffer body;
	TimestampTz call_start;
	uint64		sent = 0;
	uint64		received = 0;

#define PUSH_HEADER(line) \
	do { \
		nodes[nnodes].data = (char *) (line); \
		nodes[nnodes].next = headers; \
		headers = &nodes[nnodes++]; \
	} while (0)

	ensure_handles();
	refresh_header_cache();
	check_request_allowed(req);

	if (strcmp(ae_applied_ca_file, ae_ca_file ? ae_ca_file : "") != 0)
		reset_easy_handle();

	/* Built back to front: curl sends them in list order. */
	PUSH_HEADER(ae_headers.beta);
	PUSH_HEADER(ae_headers.version);
	PUSH_HEADER("Accept: application/json");
	if (req->credential == AE_CRED_ENVIRONMENT && ae_headers.bearer)
		PUSH_HEADER(ae_headers.bearer);
	else
		PUSH_HEADER(ae_headers.api_key);
	if (req->workspace && ae_headers.workspace)
		PUSH_HEADER(ae_headers.workspace);
	if (req->worker_id)
		PUSH_HEADER(psprintf("anthropic-worker-id: %s", req->worker_id));
	if (req->method == AE_POST)
	{
		/* No body means content-length: 0 and no content type at all. */
		PUSH_HEADER(req->body ? "Content-Type: application/json" : "Content-Type:");
		PUSH_HEADER("Expect:");
	}
	Assert(nnodes <= lengthof(nodes));

	url = psprintf("%s%s", ae_headers.base_url, req->path);
	timeout_ms = (long) ae_timeout_ms + req->extra_timeout_ms;

	memset(resp, 0, sizeof(*resp));
	memset(&body, 0, sizeof(body));
	body.cxt = CurrentMemoryContext;
	body.limit = (size_t) ae_max_response_bytes;
	call_start = GetCurrentTimestamp();

	for (attempt = 0;; attempt++)
	{
		CURLcode	rc;
		long		status = 0;
		bool		retry;
		const char *xsr;
		const char *rid;
		char	   *ctype = NULL;
		TimestampTz attempt_start;

		body.len = 0;
		body.too_large = false;
		body.out_of_memory = false;
		ae_curl_errbuf[0] = '\0';

		curl_easy_setopt(ae_easy, CURLOPT_URL, url);
		curl_easy_setopt(ae_easy, CURLOPT_HTTPHEADER, headers);
		curl_easy_setopt(ae_easy, CURLOPT_WRITEDATA, &body);
		curl_easy_setopt(ae_easy, CURLOPT_TIMEOUT_MS, timeout_ms);
		curl_easy_setopt(ae_easy, CURLOPT_CONNECTTIMEOUT_MS, (long) ae_connect_timeout_ms);
		switch (req->method)
		{
			case AE_GET:
				curl_easy_setopt(ae_easy, CURLOPT_HTTPGET, 1L);
				curl_easy_setopt(ae_easy, CURLOPT_CUSTOMREQUEST, NULL);
				break;
			case AE_POST:
				curl_easy_setopt(ae_easy, CURLOPT_POST, 1L);
				curl_easy_setopt(ae_easy, CURLOPT_POSTFIELDS, req->body ? req->body : "");
				curl_easy_setopt(ae_easy, CURLOPT_POSTFIELDSIZE_LARGE,
								 (curl_off_t) (req->body ? req->body_len : 0));
				curl_easy_setopt(ae_easy, CURLOPT_CUSTOMREQUEST, NULL);
				break;
			case AE_DELETE:
				curl_easy_setopt(ae_easy, CURLOPT_HTTPGET, 1L);
				curl_easy_setopt(ae_easy, CURLOPT_CUSTOMREQUEST, "DELETE");
				break;
		}

		attempt_start = ae_log_requests ? GetCurrentTimestamp() : 0;
		rc = perform_once();
		if (rc == CURLE_OK)
			curl_easy_getinfo(ae_easy, CURLINFO_RESPONSE_CODE, &status);
		count_bytes(&body, &sent, &received);
		rid = (rc == CURLE_OK) ? response_header("request-id") : NULL;
		if (ae_log_requests)
			log_attempt(req, rc, status, attempt + 1, attempt_start, rid);

		if (rc != CURLE_OK)
		{
			retry = !body.too_large && !body.out_of_memory &&
				!permanent_transport_error(rc) &&
				(req->retry == AE_RETRY_SAFE || nothing_was_sent(rc)) &&
				attempt < ae_max_retries;
			if (!retry)
			{
				ae_stats_record(req->endpoint, AE_OUTCOME_TRANSPORT, attempt,
								elapsed_us(call_start), sent, received, NULL);
				reset_easy_handle();
				if (body.too_large)
					ereport(ERROR,
							(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
							 errmsg("Anthropic API response exceeds anthropic.max_response_bytes (%d bytes)",
									ae_max_response_bytes)));
				if (body.out_of_memory)
					ereport(ERROR,
							(errcode(ERRCODE_OUT_OF_MEMORY),
							 errmsg("out of memory while reading an Anthropic API response")));
				raise_transport_error(rc, attempt + 1, timeout_ms);
			}
			interruptible_sleep(retry_delay_ms(false, attempt));
			continue;
		}

		xsr = response_header("x-should-retry");
		if (status >= 200 && status < 300)
			retry = false;
		else if (xsr && pg_strcasecmp(xsr, "true") == 0)
			retry = true;
		else if (xsr && pg_strcasecmp(xsr, "false") == 0)
			retry = false;
		else
			retry = status_is_retryable(status, req->retry);

		if (retry && attempt < ae_max_retries)
		{
			interruptible_sleep(retry_delay_ms(true, attempt));
			continue;
		}

		resp->status = status;
		resp->attempts = attempt + 1;
		ae_stats_record(req->endpoint, status, attempt, elapsed_us(call_start),
						sent, received, rid);
		if (rid)
			strlcpy(resp->request_id, rid, sizeof(resp->request_id));
		curl_easy_getinfo(ae_easy, CURLINFO_CONTENT_TYPE, &ctype);
		resp->json_content = ctype != NULL &&
			pg_strncasecmp(ctype, "application/json", 16) == 0;
		if (body.data == NULL)
			body.data = MemoryContextAlloc(body.cxt, 1);
		body.data[body.len] = '\0';
		resp->body = body.data;
		resp->body_len = body.len;
		break;
	}
#undef PUSH_HEADER
}
