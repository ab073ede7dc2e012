/*-------------------------------------------------------------------------
 *
 * http.c
 *		Transport layer: libcurl, headers, timeouts, interrupts, retries.
 *
 * One multi handle and a few easy handles live for the whole backend, so
 * a session keeps its TCP/TLS connections to the API (the connection
 * cache is the multi handle's).  Single calls use one easy handle; batches
 * (env_get_many) draw up to 64 from a pool.  Every transfer, single or
 * batched, goes through run_transfers(), which drives the multi interface
 * in short polls and waits out retry backoffs in the same loop, so a query
 * cancel, statement_timeout or backend termination is seen within a few
 * tens of milliseconds wherever the call is.  Handles leave the multi
 * handle on every exit path (PG_FINALLY), which also closes a half-used
 * connection.
 *
 * The static request headers are cached strings, rebuilt only when a
 * setting that feeds them changes; each transfer chains them together
 * with its few variable headers in curl_slist nodes it owns, so a call
 * allocates nothing for headers.
 *
 * Response bodies are collected into memory of the caller's context and
 * never grow past anthropic.max_response_bytes.
 *
 * Whether and when to retry is the retry policy's (retry.c); this file only
 * says how an attempt ended.  It also watches for libcurl's own re-send of
 * a request on a reused connection that died (the pre-request callback runs
 * twice in one attempt, or once before the fresh connection is refused),
 * because the server may have acted on the first.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "anthropic_env.h"
#include "http.h"
#include "retry.h"

/* How often a running transfer looks at pending interrupts. */
#define AE_POLL_INTERVAL_MS 20

#define AE_MAX_HEADERS 8

ae_http_wait_hook_type ae_http_wait_hook = NULL;

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
static CURL *ae_pool[AE_MAX_CONCURRENCY];

/* Bumped when the CA file changes; a handle configured earlier is reset. */
static uint64 ae_ca_generation = 1;
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

/* What became of a finished attempt. */
typedef enum AeAttemptResult
{
	AE_ATTEMPT_DONE,			/* resp holds the final answer */
	AE_ATTEMPT_RETRY,			/* try again at not_before */
	AE_ATTEMPT_FAILED			/* a transport failure, retries spent */
} AeAttemptResult;

/* One call in flight: its request, its handle and its retry state. */
typedef struct AeTransfer
{
	const AeHttpRequest *req;
	AeHttpResponse *resp;
	CURL	   *easy;
	char		errbuf[CURL_ERROR_SIZE];
	struct curl_slist nodes[AE_MAX_HEADERS];
	struct curl_slist *headers;
	char	   *url;
	long		timeout_ms;
	AeBodyBuffer body;
	int			attempt;		/* attempts started so far */
	TimestampTz call_start;
	TimestampTz attempt_start;
	TimestampTz not_before;		/* earliest start of the next attempt */
	uint64		sent;
	uint64		received;
	bool		running;
	bool		finished;
	bool		maybe_acted;	/* see AeHttpResponse */
	int			prereqs;		/* requests libcurl began in this attempt */
	long		refused_wait_ms;
	CURLcode	failure;		/* with AE_ATTEMPT_FAILED */
} AeTransfer;

/* Runs before libcurl sends the request, once per connection it tries. */
static int
prereq_cb(void *clientp, char *primary_ip, char *local_ip, int primary_port, int local_port)
{
	(*(int *) clientp)++;
	return CURL_PREREQFUNC_OK;
}

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
	curl_easy_setopt(easy, CURLOPT_PREREQFUNCTION, prereq_cb);
#if LIBCURL_VERSION_NUM >= 0x075700
	/* Removing a handle must not wait for a resolver thread to return. */
	curl_easy_setopt(easy, CURLOPT_QUICK_EXIT, 1L);
#endif
	if (ae_ca_file && *ae_ca_file)
		curl_easy_setopt(easy, CURLOPT_CAINFO, ae_ca_file);
	curl_easy_setopt(easy, CURLOPT_PRIVATE, (void *) (uintptr_t) ae_ca_generation);
}

static CURL *
new_easy_handle(void)
{
	CURL	   *easy = curl_easy_init();

	if (easy == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl handle")));
	configure_static_options(easy);
	return easy;
}

/* Forgets per-transfer state; keeps the connection cache (in the multi). */
static void
reset_easy_handle(CURL *easy)
{
	curl_easy_reset(easy);
	configure_static_options(easy);
}

/* Makes sure the handle was configured with the CA file now in force. */
static void
refresh_easy_handle(CURL *easy)
{
	char	   *gen = NULL;

	curl_easy_getinfo(easy, CURLINFO_PRIVATE, &gen);
	if ((uint64) (uintptr_t) gen != ae_ca_generation)
		reset_easy_handle(easy);
}

static void
ensure_handles(void)
{
	const char *ca = ae_ca_file ? ae_ca_file : "";

	if (ae_multi == NULL)
	{
		if (curl_global_init(CURL_GLOBAL_ALL) != CURLE_OK)
			ereport(ERROR,
					(errcode(ERRCODE_SYSTEM_ERROR),
					 errmsg("could not initialize libcurl")));
		ae_multi = curl_multi_init();
		if (ae_multi == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("could not create a libcurl handle")));
	}
	if (ae_applied_ca_file == NULL || strcmp(ae_applied_ca_file, ca) != 0)
	{
		if (ae_applied_ca_file)
			pfree(ae_applied_ca_file);
		ae_applied_ca_file = MemoryContextStrdup(TopMemoryContext, ca);
		ae_ca_generation++;
	}
	if (ae_easy == NULL)
		ae_easy = new_easy_handle();
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
		!(req->credential == AE_CRED_ENVIRONMENT &&
		  (ae_headers.bearer != NULL || req->bearer_key != NULL)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("no Anthropic API key is configured"),
				 errhint("Set anthropic.api_key in postgresql.conf or with ALTER SYSTEM, or ANTHROPIC_API_KEY in the server's environment.")));
}

static const char *
response_header(CURL *easy, const char *name)
{
	struct curl_header *h;

	if (curl_easy_header(easy, name, 0, CURLH_HEADER, -1, &h) == CURLHE_OK)
		return h->value;
	return NULL;
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

static void
raise_transport_error(AeTransfer *t)
{
	CURLcode	rc = t->failure;
	const char *detail = t->errbuf[0] ? t->errbuf : curl_easy_strerror(rc);
	const char *what;

	if (t->body.too_large)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("Anthropic API response exceeds anthropic.max_response_bytes (%d bytes)",
						ae_max_response_bytes)));
	if (t->body.out_of_memory)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory while reading an Anthropic API response")));

	switch (rc)
	{
		case CURLE_OPERATION_TIMEDOUT:
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("Anthropic API request timed out after %ld ms", t->timeout_ms),
					 errdetail("Attempts: %d. %s", t->attempt, detail)));
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
			 errdetail("Attempts: %d. %s", t->attempt, detail)));
}

/* What raise_transport_error() would say, as text, for a batch that goes on. */
static char *
transport_error_text(AeTransfer *t)
{
	if (t->body.too_large)
		return psprintf("response exceeds anthropic.max_response_bytes (%d bytes)",
						ae_max_response_bytes);
	if (t->failure == CURLE_OPERATION_TIMEDOUT)
		return psprintf("timed out after %ld ms (attempts: %d)", t->timeout_ms, t->attempt);
	return psprintf("%s (attempts: %d)",
					t->errbuf[0] ? t->errbuf : curl_easy_strerror(t->failure), t->attempt);
}

/* anthropic.log_requests: one line per attempt, never headers or bodies. */
static void
log_attempt(const AeTransfer *t, CURLcode rc, long status, const char *request_id)
{
	const AeHttpRequest *req = t->req;
	long		secs;
	int			usecs;
	int			pathlen = (int) strcspn(req->path, "?");

	TimestampDifference(t->attempt_start, GetCurrentTimestamp(), &secs, &usecs);
	if (rc == CURLE_OK)
		ereport(LOG,
				(errmsg("anthropic_env request %s %.*s: status %ld, attempt %d, %.1f ms, request id %s",
						req->method_name, pathlen, req->path, status, t->attempt,
						secs * 1000.0 + usecs / 1000.0, request_id ? request_id : "none"),
				 errhidestmt(true), errhidecontext(true)));
	else
		ereport(LOG,
				(errmsg("anthropic_env request %s %.*s: %s, attempt %d, %.1f ms",
						req->method_name, pathlen, req->path, curl_easy_strerror(rc),
						t->attempt, secs * 1000.0 + usecs / 1000.0),
				 errhidestmt(true), errhidecontext(true)));
}

/* Fills in what every final outcome carries and tells the caller. */
static void
report_final(AeTransfer *t)
{
	AeHttpResponse *resp = t->resp;

	resp->attempts = t->attempt;
	resp->maybe_acted = t->maybe_acted;
	resp->refused_wait_ms = t->refused_wait_ms;
	resp->ended = GetCurrentTimestamp();
	resp->elapsed_us = (int64) (resp->ended - t->call_start);
	resp->bytes_sent = t->sent;
	resp->bytes_received = t->received;
	if (t->req->on_final)
		t->req->on_final(t->req->on_final_arg, resp);
}

/* How an attempt that got no answer ended, for the retry policy. */
static AeAttemptEnd
attempt_end(const AeTransfer *t, CURLcode rc)
{
	if (t->body.too_large || t->body.out_of_memory || permanent_transport_error(rc))
		return AE_END_PERMANENT;
	/*
	 * Only the pre-request callback tells: a refused connection after it ran
	 * is libcurl's re-send on a fresh connection, the reused one having
	 * died after the request went out, so the server may have it.
	 */
	if (t->prereqs == 0)
		return AE_END_NOT_SENT;
	return AE_END_LOST;
}

/* Prepares a transfer: URL, header chain, body buffer. */
static void
transfer_init(AeTransfer *t, const AeHttpRequest *req, AeHttpResponse *resp, CURL *easy)
{
	int			n = 0;

#define PUSH_HEADER(line) \
	do { \
		t->nodes[n].data = (char *) (line); \
		t->nodes[n].next = t->headers; \
		t->headers = &t->nodes[n++]; \
	} while (0)

	memset(t, 0, sizeof(*t));
	t->req = req;
	t->resp = resp;
	t->easy = easy;
	memset(resp, 0, sizeof(*resp));

	/* Built back to front: curl sends them in list order. */
	PUSH_HEADER(ae_headers.beta);
	PUSH_HEADER(ae_headers.version);
	PUSH_HEADER("Accept: application/json");
	if (req->credential == AE_CRED_ENVIRONMENT && req->bearer_key)
		PUSH_HEADER(psprintf("Authorization: Bearer %s", req->bearer_key));
	else if (req->credential == AE_CRED_ENVIRONMENT && ae_headers.bearer)
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
	Assert(n <= AE_MAX_HEADERS);
#undef PUSH_HEADER

	t->url = psprintf("%s%s", ae_headers.base_url, req->path);
	t->timeout_ms = (long) ae_timeout_ms + req->extra_timeout_ms;
	t->body.cxt = CurrentMemoryContext;
	t->body.limit = (size_t) ae_max_response_bytes;
}

/* Starts the next attempt: sets the per-request options, joins the multi. */
static void
transfer_start(AeTransfer *t)
{
	CURL	   *easy = t->easy;
	const AeHttpRequest *req = t->req;

	refresh_easy_handle(easy);
	t->body.len = 0;
	t->body.too_large = false;
	t->body.out_of_memory = false;
	t->errbuf[0] = '\0';
	t->prereqs = 0;

	curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, t->errbuf);
	curl_easy_setopt(easy, CURLOPT_PREREQDATA, &t->prereqs);
	curl_easy_setopt(easy, CURLOPT_URL, t->url);
	curl_easy_setopt(easy, CURLOPT_HTTPHEADER, t->headers);
	curl_easy_setopt(easy, CURLOPT_WRITEDATA, &t->body);
	curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, t->timeout_ms);
	curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, (long) ae_connect_timeout_ms);

	/*
	 * libcurl silently sends a request again when a reused connection turns
	 * out dead before any answer; for a create that could mean two.  A
	 * create therefore always opens its own connection, and so does a
	 * retry, since the cached ones may be as dead as the last.
	 */
	curl_easy_setopt(easy, CURLOPT_FRESH_CONNECT,
					 (req->retry == AE_RETRY_CREATE || t->attempt > 0) ? 1L : 0L);
	switch (req->method)
	{
		case AE_GET:
			curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
			curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, NULL);
			break;
		case AE_POST:
			curl_easy_setopt(easy, CURLOPT_POST, 1L);
			curl_easy_setopt(easy, CURLOPT_POSTFIELDS, req->body ? req->body : "");
			curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE,
							 (curl_off_t) (req->body ? req->body_len : 0));
			curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, NULL);
			break;
		case AE_DELETE:
			curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
			curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, "DELETE");
			break;
	}

	/* A batch's latency counts from its send, not from its queueing. */
	if (t->attempt == 0)
		t->call_start = GetCurrentTimestamp();
	t->attempt++;
	if (ae_log_requests)
		t->attempt_start = GetCurrentTimestamp();
	curl_multi_add_handle(ae_multi, easy);
	t->running = true;
}

/* Bytes of one attempt, headers included, as libcurl counted them. */
static void
count_bytes(AeTransfer *t)
{
	long		req_size = 0;
	long		hdr_size = 0;
	curl_off_t	upload = 0;

	curl_easy_getinfo(t->easy, CURLINFO_REQUEST_SIZE, &req_size);
	curl_easy_getinfo(t->easy, CURLINFO_SIZE_UPLOAD_T, &upload);
	curl_easy_getinfo(t->easy, CURLINFO_HEADER_SIZE, &hdr_size);
	t->sent += (uint64) req_size + (uint64) upload;
	t->received += (uint64) hdr_size + t->body.len;
}

/*
 * Decides what a finished attempt means.  Never raises: a batch must be
 * able to clean up its other transfers first.
 */
static AeAttemptResult
transfer_finish(AeTransfer *t, CURLcode rc)
{
	CURL	   *easy = t->easy;
	long		status = 0;
	const char *rid = NULL;
	char	   *ctype = NULL;
	AeAttemptEnd end;
	AeRetryHeaders hdrs = {NULL, NULL, NULL};
	AeRetryDecision d;

	if (t->prereqs > 0)
		t->resp->began = true;
	if (rc == CURLE_OK)
	{
		curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
		rid = response_header(easy, "request-id");
		hdrs.should_retry = response_header(easy, "x-should-retry");
		hdrs.retry_after_ms = response_header(easy, "retry-after-ms");
		hdrs.retry_after = response_header(easy, "retry-after");
	}
	count_bytes(t);
	if (ae_log_requests)
		log_attempt(t, rc, status, rid);

	/* libcurl sent the request twice: the first may have been carried out. */
	if (t->prereqs > 1)
		t->maybe_acted = true;
	end = rc == CURLE_OK ? AE_END_ANSWER : attempt_end(t, rc);
	d = ae_retry_decide(t->req->retry, end, status, &hdrs, t->attempt);
	if (t->req->no_retry)
		d.retry = false;
	if (d.retry)
	{
		if (ae_retry_may_have_acted(end, status))
			t->maybe_acted = true;
		t->not_before = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), d.delay_ms);
		return AE_ATTEMPT_RETRY;
	}
	t->refused_wait_ms = d.refused_wait_ms;

	if (rc != CURLE_OK)
	{
		t->resp->transport_failed = true;
		if (end == AE_END_LOST || (end == AE_END_PERMANENT && t->prereqs > 0))
			t->maybe_acted = true;
		report_final(t);
		t->failure = rc;
		return AE_ATTEMPT_FAILED;
	}

	t->resp->status = status;
	if (rid)
		strlcpy(t->resp->request_id, rid, sizeof(t->resp->request_id));
	curl_easy_getinfo(easy, CURLINFO_CONTENT_TYPE, &ctype);
	t->resp->json_content = ctype != NULL &&
		pg_strncasecmp(ctype, "application/json", 16) == 0;
	if (t->body.data == NULL)
		t->body.data = MemoryContextAlloc(t->body.cxt, 1);
	t->body.data[t->body.len] = '\0';
	t->resp->body = t->body.data;
	t->resp->body_len = t->body.len;
	report_final(t);
	return AE_ATTEMPT_DONE;
}

static AeTransfer *
find_transfer(AeTransfer *ts, int n, CURL *easy)
{
	int			i;

	for (i = 0; i < n; i++)
		if (ts[i].running && ts[i].easy == easy)
			return &ts[i];
	return NULL;
}

/* A pool handle that no running transfer holds. */
static CURL *
free_pool_handle(AeTransfer *ts, int n, int concurrency)
{
	int			p;
	int			i;

	for (p = 0; p < concurrency; p++)
	{
		bool		used = false;

		for (i = 0; i < n && !used; i++)
			used = ts[i].running && ts[i].easy == ae_pool[p];
		if (!used)
			return ae_pool[p];
	}
	elog(ERROR, "no free libcurl handle in the pool");
	return NULL;				/* keep compiler quiet */
}

static void
start_transfer(AeTransfer *ts, int n, int i, int concurrency, bool pooled)
{
	if (pooled)
		ts[i].easy = free_pool_handle(ts, n, concurrency);
	transfer_start(&ts[i]);
}

/*
 * The body of run_transfers(): starts, polls and finishes transfers.
 * Returns -1 when all are done, the index of a transfer stop_at() stopped
 * at, or -2 - index for a transfer that failed in transport.
 */
static pg_noinline int
transfer_loop(AeTransfer *ts, int n, int concurrency, bool pooled,
			  bool (*stop_at) (long status), bool keep_going)
{
	int			next = 0;		/* first transfer never started */

	for (;;)
	{
		TimestampTz now;
		long		wait_ms = AE_POLL_INTERVAL_MS;
		int			running = 0;
		int			pending = 0;
		int			i;
		int			still;
		CURLMsg    *msg;
		int			left;

		CHECK_FOR_INTERRUPTS();
		if (ae_http_wait_hook)
		{
			ae_http_wait_hook();
			/* A lock the hook waited for ended the wait event. */
			pgstat_report_wait_start(request_wait_event());
		}

		/* Start what may start: retries that are due, then new ones. */
		now = GetCurrentTimestamp();
		for (i = 0; i < n; i++)
			if (ts[i].running)
				running++;
		for (i = 0; i < next && running < concurrency; i++)
		{
			if (!ts[i].running && !ts[i].finished && ts[i].not_before <= now)
			{
				start_transfer(ts, n, i, concurrency, pooled);
				running++;
			}
		}
		while (next < n && running < concurrency)
		{
			start_transfer(ts, n, next++, concurrency, pooled);
			running++;
		}
		for (i = 0; i < next; i++)
		{
			if (!ts[i].running && !ts[i].finished)
			{
				long		until = TimestampDifferenceMilliseconds(now, ts[i].not_before);

				pending++;
				wait_ms = Min(wait_ms, Max(until, 1));
			}
		}
		if (running == 0 && pending == 0 && next >= n)
			return -1;

		if (running > 0)
		{
			int			finished = 0;

			if (curl_multi_perform(ae_multi, &still) != CURLM_OK)
				elog(ERROR, "curl_multi_perform failed");
			while ((msg = curl_multi_info_read(ae_multi, &left)) != NULL)
			{
				AeTransfer *t;
				AeAttemptResult r;

				if (msg->msg != CURLMSG_DONE)
					continue;
				t = find_transfer(ts, n, msg->easy_handle);
				if (t == NULL)
					continue;
				curl_multi_remove_handle(ae_multi, t->easy);
				t->running = false;
				finished++;
				r = transfer_finish(t, msg->data.result);
				curl_easy_setopt(t->easy, CURLOPT_ERRORBUFFER, NULL);
				if (r == AE_ATTEMPT_RETRY)
					continue;
				t->finished = true;
				if (r == AE_ATTEMPT_FAILED && keep_going)
				{
					t->resp->status = 0;
					t->resp->attempts = t->attempt;
					t->resp->transport_error = transport_error_text(t);
					reset_easy_handle(t->easy);
				}
				/* A follow-up starts at once, not after the whole batch. */
				if (keep_going && t->req->then != NULL)
				{
					const AeHttpRequest *next = t->req->then(t->req->then_arg, t->resp);

					if (next != NULL)
						transfer_init(t, next, t->resp, NULL);
					continue;
				}
				if (r == AE_ATTEMPT_FAILED && keep_going)
					continue;
				if (r == AE_ATTEMPT_FAILED)
					return -2 - (int) (t - ts);
				if (stop_at && stop_at(t->resp->status))
					return (int) (t - ts);
			}
			/* Something finished: start what may start before waiting. */
			if (finished == 0 && still > 0)
				(void) curl_multi_poll(ae_multi, NULL, 0, (int) wait_ms, NULL);
		}
		else
		{
			/* Only backoffs pending: wait on the latch, not on sockets. */
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 wait_ms, request_wait_event());
			ResetLatch(MyLatch);
			/* WaitLatch ended the wait event; the next attempt shows it too. */
			pgstat_report_wait_start(request_wait_event());
		}
	}
}

/*
 * Takes every running transfer out of the multi handle.  One cut short by a
 * raise tells whether its request had begun.
 */
static void
stop_transfers(AeTransfer *ts, int n)
{
	int			i;

	pgstat_report_wait_end();
	for (i = 0; i < n; i++)
	{
		if (ts[i].running)
		{
			if (ts[i].prereqs > 0)
				ts[i].resp->began = true;
			curl_multi_remove_handle(ae_multi, ts[i].easy);
			curl_easy_setopt(ts[i].easy, CURLOPT_ERRORBUFFER, NULL);
			ts[i].running = false;
		}
	}
}

/*
 * Runs transfers, at most `concurrency` at a time, until all are done or
 * one fails in transport (then the others are stopped and that failure is
 * raised), or until one gets a final answer for which stop_at() says so
 * (then its index is returned).  Returns -1 when all completed.
 */
static int
run_transfers(AeTransfer *ts, int n, int concurrency, bool pooled,
			  bool (*stop_at) (long status), bool keep_going)
{
	volatile int result = -1;

	pgstat_report_wait_start(request_wait_event());
	PG_TRY();
	{
		result = transfer_loop(ts, n, concurrency, pooled, stop_at, keep_going);
	}
	PG_CATCH();
	{
		stop_transfers(ts, n);
		PG_RE_THROW();
	}
	PG_END_TRY();
	stop_transfers(ts, n);

	if (result <= -2)
	{
		AeTransfer *failed = &ts[-2 - result];

		reset_easy_handle(failed->easy);
		raise_transport_error(failed);
	}
	return result;
}

void
ae_http_execute(const AeHttpRequest *req, AeHttpResponse *resp)
{
	AeTransfer	t;

	ensure_handles();
	refresh_header_cache();
	check_request_allowed(req);
	transfer_init(&t, req, resp, ae_easy);
	(void) run_transfers(&t, 1, 1, false, NULL, false);
}

static int
execute_batch(const AeHttpRequest *reqs, AeHttpResponse *resps, int n,
			  int concurrency, bool (*stop_at) (long status), bool keep_going)
{
	AeTransfer *ts;
	int			i;

	Assert(concurrency >= 1 && concurrency <= AE_MAX_CONCURRENCY);
	if (n == 0)
		return -1;
	ensure_handles();
	refresh_header_cache();
	check_request_allowed(&reqs[0]);

	for (i = 0; i < concurrency; i++)
		if (ae_pool[i] == NULL)
			ae_pool[i] = new_easy_handle();

	ts = palloc(sizeof(AeTransfer) * n);
	for (i = 0; i < n; i++)
		transfer_init(&ts[i], &reqs[i], &resps[i], NULL);

	/* Each transfer borrows a free pool handle for each attempt. */
	return run_transfers(ts, n, concurrency, true, stop_at, keep_going);
}

int
ae_http_execute_many(const AeHttpRequest *reqs, AeHttpResponse *resps, int n,
					 int concurrency, bool (*stop_at) (long status))
{
	return execute_batch(reqs, resps, n, concurrency, stop_at, false);
}

void
ae_http_execute_each(const AeHttpRequest *reqs, AeHttpResponse *resps, int n,
					 int concurrency)
{
	(void) execute_batch(reqs, resps, n, concurrency, NULL, true);
}
