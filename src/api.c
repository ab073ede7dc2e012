/*-------------------------------------------------------------------------
 *
 * api.c
 *		API layer: endpoint table, paths, query strings, error decoding.
 *
 * The table below is the single description of the fourteen endpoints
 * (wire-notes.md); ae_api_call() turns an entry plus arguments into a
 * transport request, then turns the answer into either a checked JSON
 * value or an ereport with the SQLSTATE of design.md §1, a DETAIL naming
 * status, error type, error code and request id, and a CONTEXT naming the
 * method and path.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "anthropic_env.h"
#include "mb/pg_wchar.h"
#include "utils/jsonb.h"

#include "anthropic_env.h"
#include "api.h"
#include "convert.h"
#include "envkeys.h"
#include "http.h"
#include "redact.h"
#include "retry.h"
#include "stats.h"

typedef struct AeEndpoint
{
	AeMethod	method;
	const char *path;			/* printf template; %s are path arguments */
	int			nargs;
	AeCredential credential;
	bool		workspace;		/* sends anthropic-workspace-id */
	AeRetryClass retry;
	AejShape	shape;
	AejShape	item_shape;		/* for AEJ_PAGE answers */
	bool		null_answer_ok; /* the answer may be JSON null */
	const char *not_found;		/* "environment" or "work item" */
	AeReconcileRule reconcile;	/* how a repeat of it shows (retry.h) */
} AeEndpoint;

#define ENVS "/v1/environments"

static const AeEndpoint endpoints[AE_ENDPOINT_COUNT] = {
	[AE_ENV_CREATE] = {AE_POST, ENVS, 0,
		AE_CRED_API_KEY, true, AE_RETRY_CREATE, AEJ_ENVIRONMENT, 0, false, NULL, AE_RECONCILE_NONE},
	[AE_ENV_LIST] = {AE_GET, ENVS, 0,
		AE_CRED_API_KEY, true, AE_RETRY_SAFE, AEJ_PAGE, AEJ_ENVIRONMENT, false, NULL, AE_RECONCILE_NONE},
	[AE_ENV_GET] = {AE_GET, ENVS "/%s", 1,
		AE_CRED_API_KEY, true, AE_RETRY_SAFE, AEJ_ENVIRONMENT, 0, false, "environment", AE_RECONCILE_NONE},
	[AE_ENV_UPDATE] = {AE_POST, ENVS "/%s", 1,
		AE_CRED_API_KEY, true, AE_RETRY_SAFE, AEJ_ENVIRONMENT, 0, false, "environment", AE_RECONCILE_NONE},
	[AE_ENV_DELETE] = {AE_DELETE, ENVS "/%s", 1,
		AE_CRED_API_KEY, true, AE_RETRY_SAFE, AEJ_ENVIRONMENT_DELETED, 0, false, "environment", AE_RECONCILE_DELETE},
	[AE_ENV_ARCHIVE] = {AE_POST, ENVS "/%s/archive", 1,
		AE_CRED_API_KEY, true, AE_RETRY_SAFE, AEJ_ENVIRONMENT, 0, false, "environment", AE_RECONCILE_ARCHIVE},
	[AE_WORK_GET] = {AE_GET, ENVS "/%s/work/%s", 2,
		AE_CRED_API_KEY, true, AE_RETRY_SAFE, AEJ_WORK, 0, false, "work item", AE_RECONCILE_NONE},
	[AE_WORK_POLL] = {AE_GET, ENVS "/%s/work/poll", 1,
		AE_CRED_ENVIRONMENT, false, AE_RETRY_SAFE, AEJ_WORK, 0, true, "environment", AE_RECONCILE_NONE},
	[AE_WORK_ACK] = {AE_POST, ENVS "/%s/work/%s/ack", 2,
		AE_CRED_ENVIRONMENT, false, AE_RETRY_SAFE, AEJ_WORK, 0, false, "work item", AE_RECONCILE_ACK},
	[AE_WORK_HEARTBEAT] = {AE_POST, ENVS "/%s/work/%s/heartbeat", 2,
		AE_CRED_ENVIRONMENT, false, AE_RETRY_SAFE, AEJ_HEARTBEAT, 0, false, "work item", AE_RECONCILE_HEARTBEAT},
	[AE_WORK_STOP] = {AE_POST, ENVS "/%s/work/%s/stop", 2,
		AE_CRED_ENVIRONMENT, true, AE_RETRY_SAFE, AEJ_WORK, 0, false, "work item", AE_RECONCILE_STOP},
	[AE_WORK_LIST] = {AE_GET, ENVS "/%s/work", 1,
		AE_CRED_ENVIRONMENT, false, AE_RETRY_SAFE, AEJ_PAGE, AEJ_WORK, false, "environment", AE_RECONCILE_NONE},
	[AE_WORK_UPDATE] = {AE_POST, ENVS "/%s/work/%s", 2,
		AE_CRED_API_KEY, true, AE_RETRY_SAFE, AEJ_WORK, 0, false, "work item", AE_RECONCILE_NONE},
	[AE_WORK_STATS] = {AE_GET, ENVS "/%s/work/stats", 1,
		AE_CRED_API_KEY, true, AE_RETRY_SAFE, AEJ_QUEUE_STATS, 0, false, "environment", AE_RECONCILE_NONE},
};

static const char *const method_names[] = {"GET", "POST", "DELETE"};

AejShape
ae_endpoint_item_shape(AeEndpointId id)
{
	return endpoints[id].item_shape;
}

void
ae_check_id(const char *argname, const char *id)
{
	const char *reason = NULL;
	const unsigned char *p;

	if (*id == '\0')
		reason = "It is empty.";
	else if (strcmp(id, ".") == 0 || strcmp(id, "..") == 0)
		reason = "\".\" and \"..\" are not ids.";
	else if (*id == ';')
		reason = "It starts with \";\".";
	else
	{
		for (p = (const unsigned char *) id; *p; p++)
		{
			if (*p == '/' || *p == '?' || *p == '#')
			{
				reason = "It contains \"/\", \"?\" or \"#\".";
				break;
			}
			if (*p < 0x20 || *p == 0x7f)
			{
				reason = "It contains a control character.";
				break;
			}
		}
	}
	if (reason)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid %s", argname),
				 errdetail("%s", reason)));
}

void
ae_check_page_size(const char *argname, int value)
{
	if (value < 1 || value > 1000)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be between 1 and 1000", argname)));
}

/* Appends s (server encoding) as UTF-8, percent-encoding all but unreserved. */
static void
append_encoded(StringInfo buf, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	const unsigned char *p;

	p = (const unsigned char *) pg_server_to_any(s, strlen(s), PG_UTF8);
	for (; *p; p++)
	{
		if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
			(*p >= '0' && *p <= '9') || *p == '-' || *p == '.' || *p == '_' || *p == '~')
			appendStringInfoChar(buf, (char) *p);
		else
		{
			appendStringInfoChar(buf, '%');
			appendStringInfoChar(buf, hex[*p >> 4]);
			appendStringInfoChar(buf, hex[*p & 15]);
		}
	}
}

typedef struct AeErrorContext
{
	const char *method;
	const char *path;
} AeErrorContext;

static void
api_error_context(void *arg)
{
	AeErrorContext *ctx = (AeErrorContext *) arg;

	errcontext("Anthropic API request %s %s", ctx->method, ctx->path);
}

static int
sqlstate_for_status(long status)
{
	switch (status)
	{
		case 400:
		case 422:
			return ERRCODE_INVALID_PARAMETER_VALUE;
		case 401:
			return ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION;
		case 402:
		case 403:
			return ERRCODE_INSUFFICIENT_PRIVILEGE;
		case 404:
			return ERRCODE_UNDEFINED_OBJECT;
		case 408:
			return ERRCODE_CONNECTION_FAILURE;
		case 409:
			return ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE;
		case 412:
			return ERRCODE_T_R_SERIALIZATION_FAILURE;
		case 413:
			return ERRCODE_PROGRAM_LIMIT_EXCEEDED;
		case 429:
			return ERRCODE_CONFIGURATION_LIMIT_EXCEEDED;
	}
	if (status >= 500)
		return ERRCODE_SYSTEM_ERROR;
	if (status >= 400)
		return ERRCODE_INVALID_PARAMETER_VALUE;
	/* 1xx and 3xx (redirects are never followed) */
	return ERRCODE_CONNECTION_FAILURE;
}

static char *
server_text(const char *utf8)
{
	/* A server may echo a key back; what it says is shown masked. */
	return ae_redact_text(ae_from_utf8(utf8, strlen(utf8)));
}

/* Raises the error an unsuccessful answer stands for. */
static void
raise_api_error(const AeEndpoint *ep, const AeCall *call, const AeHttpResponse *resp,
				const char *note)
{
	json_t	   *root = aej_parse(resp->body, resp->body_len, NULL, 0);
	AejError	err;
	bool		decoded = aej_decode_error(root, &err);
	StringInfoData detail;
	const char *rid = resp->request_id[0] ? resp->request_id : err.request_id;
	int			sqlstate = sqlstate_for_status(resp->status);

	initStringInfo(&detail);
	appendStringInfo(&detail, "HTTP status %ld", resp->status);
	if (decoded && err.type)
		appendStringInfo(&detail, ", error type %s", server_text(err.type));
	if (decoded && err.error_code)
		appendStringInfo(&detail, ", error code %s", server_text(err.error_code));
	if (rid)
		appendStringInfo(&detail, ", request id %s", server_text(rid));
	if (resp->attempts > 1)
		appendStringInfo(&detail, ", after %d attempts", resp->attempts);
	appendStringInfoChar(&detail, '.');
	if (resp->refused_wait_ms > 0)
		appendStringInfo(&detail, " The server asked to retry after %ld ms, longer than anthropic.max_retry_wait.",
						 resp->refused_wait_ms);
	if (decoded && err.current_state)
	{
		char	   *cs = json_dumps(err.current_state, JSON_COMPACT | JSON_SORT_KEYS);

		if (cs)
			appendStringInfo(&detail, " Current state: %s.", server_text(cs));
	}
	if (note)
		appendStringInfo(&detail, " %s", note);

	if (resp->status == 404 && ep->not_found)
	{
		if (ep->nargs == 2 && strcmp(ep->not_found, "work item") == 0)
			ereport(ERROR,
					(errcode(sqlstate),
					 errmsg("work item \"%s\" does not exist in environment \"%s\"",
							call->args[1], call->args[0]),
					 errdetail_internal("%s", detail.data)));
		ereport(ERROR,
				(errcode(sqlstate),
				 errmsg("%s \"%s\" does not exist", ep->not_found, call->args[0]),
				 errdetail_internal("%s", detail.data)));
	}
	if (decoded && err.message)
		ereport(ERROR,
				(errcode(sqlstate),
				 errmsg("Anthropic API request failed: %s", server_text(err.message)),
				 errdetail_internal("%s", detail.data)));
	ereport(ERROR,
			(errcode(sqlstate),
			 errmsg("Anthropic API request failed with HTTP status %ld", resp->status),
			 errdetail_internal("%s", detail.data)));
}

static void
raise_malformed(const AeHttpResponse *resp, const char *why)
{
	ereport(ERROR,
			(errcode(ERRCODE_CONNECTION_FAILURE),
			 errmsg("malformed answer from the Anthropic API"),
			 errdetail_internal("%s", ae_redact_text(psprintf("%s HTTP status %ld%s%s.", why, resp->status,
															 resp->request_id[0] ? ", request id " : "",
															 resp->request_id)))));
}

/* Everything a call needs while in flight: request, path, error context. */
typedef struct AePrepared
{
	AeHttpRequest req;
	AeErrorContext ctx;
} AePrepared;

static void
record_final(void *arg, const AeHttpResponse *resp)
{
	ae_stats_record((int) (uintptr_t) arg,
					resp->transport_failed ? AE_OUTCOME_TRANSPORT : resp->status,
					resp->attempts - 1, resp->elapsed_us,
					resp->bytes_sent, resp->bytes_received,
					resp->request_id[0] ? resp->request_id : NULL);
}

static void
prepare_call(const AeCall *call, AePrepared *p)
{
	const AeEndpoint *ep = &endpoints[call->endpoint];
	StringInfoData path;
	size_t		path_len;
	const char *t;
	int			argno = 0;
	int			i;
	bool		first = true;

	/*
	 * Only a preloaded library masks keys in every process; without it a
	 * reload or a log line can show them, so nothing carries one out.
	 */
	if (!ae_preloaded)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("anthropic_env must be loaded through shared_preload_libraries to send requests"),
				 errdetail("Without it PostgreSQL can write keys to the server log and pg_db_role_setting."),
				 errhint("Add anthropic_env to shared_preload_libraries in postgresql.conf and restart the server.")));

	initStringInfo(&path);
	for (t = ep->path; *t; t++)
	{
		if (t[0] == '%' && t[1] == 's')
		{
			Assert(argno < ep->nargs);
			append_encoded(&path, call->args[argno++]);
			t++;
		}
		else
			appendStringInfoChar(&path, *t);
	}
	path_len = path.len;
	for (i = 0; i < AE_MAX_QUERY; i++)
	{
		if (call->query[i].name == NULL || call->query[i].value == NULL)
			continue;
		appendStringInfoChar(&path, first ? '?' : '&');
		appendStringInfoString(&path, call->query[i].name);
		appendStringInfoChar(&path, '=');
		append_encoded(&path, call->query[i].value);
		first = false;
	}

	memset(p, 0, sizeof(*p));
	p->req.on_final = record_final;
	p->req.on_final_arg = (void *) (uintptr_t) call->endpoint;
	p->req.method = ep->method;
	p->req.method_name = method_names[ep->method];
	p->req.path = path.data;
	p->req.credential = ep->credential;
	p->req.workspace = ep->workspace;
	p->req.retry = ep->retry;
	p->req.no_retry = call->no_retry;
	/* Work calls of every environment take that environment's own key. */
	if (ep->credential == AE_CRED_ENVIRONMENT)
		p->req.bearer_key = ae_envkeys_lookup(call->args[0]);
	p->req.extra_timeout_ms = call->extra_timeout_ms;
	if (call->worker_id)
		p->req.worker_id = pg_server_to_any(call->worker_id, strlen(call->worker_id), PG_UTF8);
	if (call->body)
	{
		p->req.body = pg_server_to_any(call->body, strlen(call->body), PG_UTF8);
		p->req.body_len = strlen(p->req.body);
	}
	p->ctx.method = p->req.method_name;
	p->ctx.path = pnstrdup(path.data, path_len);
}

static const char *
query_value(const AeCall *call, const char *name)
{
	int			i;

	for (i = 0; i < AE_MAX_QUERY; i++)
		if (call->query[i].name && strcmp(call->query[i].name, name) == 0)
			return call->query[i].value;
	return NULL;
}

/*
 * A failed answer to a call that may have been carried out already: true,
 * with the call's answer in *answer, when the server's state shows it was
 * (retry.c's rules).
 */
static bool
reconcile(const AeEndpoint *ep, const AeCall *call, const AeHttpResponse *resp, json_t **answer,
		  const char **note)
{
	json_t	   *body = aej_parse(resp->body, resp->body_len, NULL, 0);
	const char *expected = call->endpoint == AE_WORK_HEARTBEAT ?
		query_value(call, "expected_last_heartbeat") : NULL;
	AeCall		get = {0};
	json_t	   *object;

	switch (ae_retry_reconcile(ep->reconcile, resp->status, body, expected, answer))
	{
		case AE_RECONCILED_NO:
			return false;
		case AE_RECONCILED_ANSWER:
			return true;
		case AE_RECONCILED_DELETED:
			*answer = json_pack("{s:s, s:s}", "id", call->args[0], "type", "environment_deleted");
			return *answer != NULL;
		case AE_RECONCILED_FETCH:
			break;
	}

	/*
	 * The fetch (GET of the item or environment) takes the API key; the
	 * environment key of a work call does not open it.  Without an API key
	 * the answer stands, with a note, rather than failing as unauthorized.
	 */
	if (ae_effective_api_key() == NULL)
	{
		*note = "An earlier attempt may have succeeded; telling needs a GET with the API key, and none is configured.";
		return false;
	}
	get.endpoint = ep->nargs == 2 ? AE_WORK_GET : AE_ENV_GET;
	get.args[0] = call->args[0];
	get.args[1] = call->args[1];
	get.missing_ok = true;
	/*
	 * A caller that makes one attempt (the keeper's round, bounded by its
	 * timeout_ms) gets a one-attempt re-fetch: retries and a Retry-After
	 * would hold the round past its bound.
	 */
	get.no_retry = call->no_retry;
	/* The re-fetch's own parse keeps its numbers as the server wrote them. */
	get.raw_out = call->raw_out;
	object = ae_api_call(&get);
	if (object == NULL || !ae_retry_state_confirms(ep->reconcile, object, call->stop_force))
	{
		if (call->raw_out)
			*call->raw_out = NULL;
		return false;
	}
	*answer = object;
	return true;
}

/*
 * Turns a final answer into the checked JSON value, NULL (404 with
 * missing_ok, or an allowed JSON null), or the error it stands for.
 */
static json_t *
finish_call(const AeCall *call, const AeHttpResponse *resp)
{
	const AeEndpoint *ep = &endpoints[call->endpoint];
	json_t	   *root;
	Jsonb	   *raw;
	char		errbuf[256];
	const char *msg;

	if (call->raw_out)
		*call->raw_out = NULL;
	if (resp->status < 200 || resp->status >= 300)
	{
		const char *note = NULL;

		if ((resp->maybe_acted || call->repeats) && ep->reconcile != AE_RECONCILE_NONE &&
			reconcile(ep, call, resp, &root, &note))
			return root;
		if (resp->status == 404 && call->missing_ok)
			return NULL;
		raise_api_error(ep, call, resp, note);
	}
	if (!resp->json_content)
		raise_malformed(resp, "The answer is not of content type application/json.");
	/* One parse, by jsonb_in; the checks read a jansson view of it. */
	raw = ae_answer_to_jsonb(resp->body, resp->body_len, &msg);
	if (raw == NULL)
		raise_malformed(resp, msg);
	root = ae_jsonb_to_json(raw, call->raw_out != NULL);
	if (root == NULL)
		raise_malformed(resp, "The answer is nested more than 2048 levels deep, or memory ran out.");
	if (json_is_null(root) && ep->null_answer_ok)
		return NULL;
	msg = aej_check_shape(root, ep->shape, errbuf, sizeof(errbuf));
	if (msg)
		raise_malformed(resp, msg);
	if (call->raw_out)
		*call->raw_out = raw;
	return root;
}

static void
push_context(ErrorContextCallback *cb, AeErrorContext *ctx)
{
	cb->callback = api_error_context;
	cb->arg = ctx;
	cb->previous = error_context_stack;
	error_context_stack = cb;
}

json_t *
ae_api_call(const AeCall *call)
{
	AePrepared	p;
	AeHttpResponse resp;
	ErrorContextCallback errcb;
	json_t	   *result;

	prepare_call(call, &p);
	push_context(&errcb, &p.ctx);
	ae_http_execute(&p.req, &resp);
	result = finish_call(call, &resp);
	error_context_stack = errcb.previous;
	return result;
}

/* Prepares every call of a batch; the answers go into *resps. */
static void
prepare_batch(const AeCall *calls, int n, AePrepared **p, AeHttpRequest **reqs,
			  AeHttpResponse **resps)
{
	int			i;

	*p = palloc(sizeof(AePrepared) * n);
	*reqs = palloc(sizeof(AeHttpRequest) * n);
	*resps = palloc0(sizeof(AeHttpResponse) * n);
	for (i = 0; i < n; i++)
	{
		prepare_call(&calls[i], &(*p)[i]);
		(*reqs)[i] = (*p)[i].req;
	}
}

/*
 * One call's outcome, as ae_api_call_each reports it.  It raises only for
 * what is not this call's: a cancel (the keeper's SIGTERM is one), a
 * shutdown or an out-of-memory.  Recorded as this call's error, a cancel
 * would be spent, and the batch's other outcomes (a reconciliation's
 * re-fetch among them) would run on uncancellable.
 */
static void
outcome_of(const AeCall *call, AePrepared *p, AeHttpResponse *resp, AeCallOutcome *out)
{
	MemoryContext cxt = CurrentMemoryContext;
	ErrorContextCallback errcb;

	out->answer = NULL;
	out->error = NULL;
	out->failed_body = NULL;
	out->status = resp->status;
	out->maybe_acted = resp->maybe_acted;
	out->ended = resp->ended;
	push_context(&errcb, &p->ctx);
	PG_TRY();
	{
		if (resp->status == 0)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("Anthropic API request failed in transport"),
					 errdetail_internal("%s", resp->transport_error)));
		out->answer = finish_call(call, resp);
	}
	PG_CATCH();
	{
		int			code = geterrcode();

		if (code == ERRCODE_QUERY_CANCELED || code == ERRCODE_ADMIN_SHUTDOWN ||
			code == ERRCODE_OUT_OF_MEMORY)
		{
			error_context_stack = errcb.previous;
			PG_RE_THROW();
		}
		MemoryContextSwitchTo(cxt);
		out->error = CopyErrorData();
		FlushErrorState();
		/* A caller reconciling across calls reads current_state in it. */
		if (resp->body != NULL)
			out->failed_body = aej_parse(resp->body, resp->body_len, NULL, 0);
	}
	PG_END_TRY();
	error_context_stack = errcb.previous;
}

void
ae_api_call_each(const AeCall *calls, int n, int concurrency, AeCallOutcome *out)
{
	AePrepared *p;
	AeHttpRequest *reqs;
	AeHttpResponse *resps;
	int			i;

	if (n == 0)
		return;
	prepare_batch(calls, n, &p, &reqs, &resps);

	/*
	 * A caller cut short by a raise learns which of its requests went out
	 * and what answer each had.  A FATAL skips the copy: every request is
	 * then taken as begun and unanswered.
	 */
	for (i = 0; i < n; i++)
	{
		out[i].began = true;
		out[i].status = 0;
	}
	PG_TRY();
	{
		ae_http_execute_each(reqs, resps, n, Min(concurrency, AE_MAX_CONCURRENCY));
		for (i = 0; i < n; i++)
			outcome_of(&calls[i], &p[i], &resps[i], &out[i]);
	}
	PG_FINALLY();
	{
		for (i = 0; i < n; i++)
		{
			out[i].began = resps[i].began;
			out[i].status = resps[i].status;
		}
	}
	PG_END_TRY();
}

/* One chain of ae_api_call_chains() while its batch runs. */
typedef struct AeChain
{
	int			index;
	const AeCall *call;			/* the call in flight */
	AePrepared	p;
	AeChainNext next;
	void	   *arg;
	bool		done;			/* next() has seen the last outcome */
	AeCallOutcome *out;
} AeChain;

/*
 * Whether an answer can be turned into an outcome inside the batch: a
 * reconciliation would send a request of its own, so it waits for the
 * batch's end.
 */
static bool
outcome_needs_no_request(const AeCall *call, const AeHttpResponse *resp)
{
	return resp->status == 0 || (resp->status >= 200 && resp->status < 300) ||
		!resp->maybe_acted || endpoints[call->endpoint].reconcile == AE_RECONCILE_NONE;
}

static const AeHttpRequest *
chain_then(void *arg, AeHttpResponse *resp)
{
	AeChain    *c = arg;
	const AeCall *following;

	if (!outcome_needs_no_request(c->call, resp))
		return NULL;
	outcome_of(c->call, &c->p, resp, c->out);
	following = c->next(c->arg, c->index, c->call, c->out);
	if (following == NULL)
	{
		c->done = true;
		return NULL;
	}
	c->call = following;
	prepare_call(following, &c->p);
	c->p.req.then = chain_then;
	c->p.req.then_arg = c;
	return &c->p.req;
}

void
ae_api_call_chains(const AeCall *calls, int n, int concurrency,
				   AeChainNext next, void *arg, AeCallOutcome *out)
{
	AeChain    *chains;
	AeHttpRequest *reqs;
	AeHttpResponse *resps;
	int			i;

	if (n == 0)
		return;
	chains = palloc0(sizeof(AeChain) * n);
	reqs = palloc(sizeof(AeHttpRequest) * n);
	resps = palloc(sizeof(AeHttpResponse) * n);
	for (i = 0; i < n; i++)
	{
		AeChain    *c = &chains[i];

		c->index = i;
		c->call = &calls[i];
		c->next = next;
		c->arg = arg;
		c->out = &out[i];
		prepare_call(c->call, &c->p);
		reqs[i] = c->p.req;
		reqs[i].then = chain_then;
		reqs[i].then_arg = c;
	}
	ae_http_execute_each(reqs, resps, n, Min(concurrency, AE_MAX_CONCURRENCY));

	/* Chains left to reconcile go on one call at a time. */
	for (i = 0; i < n; i++)
	{
		AeChain    *c = &chains[i];
		AeHttpResponse *resp = &resps[i];

		while (!c->done)
		{
			const AeCall *following;

			outcome_of(c->call, &c->p, resp, c->out);
			following = c->next(c->arg, c->index, c->call, c->out);
			if (following == NULL)
				break;
			c->call = following;
			prepare_call(following, &c->p);
			resp = palloc(sizeof(AeHttpResponse));
			ae_http_execute_each(&c->p.req, resp, 1, 1);
		}
	}
}

/* A batch stops at the first final answer that is neither 2xx nor 404. */
static bool
batch_fatal_status(long status)
{
	return (status < 200 || status >= 300) && status != 404;
}

void
ae_api_call_many(const AeCall *calls, int n, int concurrency, json_t **results)
{
	AePrepared *p;
	AeHttpRequest *reqs;
	AeHttpResponse *resps;
	AeErrorContext batch_ctx;
	ErrorContextCallback errcb;
	int			stopped;
	int			i;

	if (n == 0)
		return;
	prepare_batch(calls, n, &p, &reqs, &resps);

	batch_ctx.method = p[0].ctx.method;
	batch_ctx.path = psprintf("%s (one of a batch of %d)", p[0].ctx.path, n);
	push_context(&errcb, &batch_ctx);
	stopped = ae_http_execute_many(reqs, resps, n, concurrency, batch_fatal_status);
	error_context_stack = errcb.previous;

	if (stopped >= 0)
	{
		push_context(&errcb, &p[stopped].ctx);
		(void) finish_call(&calls[stopped], &resps[stopped]);
		error_context_stack = errcb.previous;
	}
	for (i = 0; i < n; i++)
	{
		push_context(&errcb, &p[i].ctx);
		results[i] = finish_call(&calls[i], &resps[i]);
		error_context_stack = errcb.previous;
	}
}
