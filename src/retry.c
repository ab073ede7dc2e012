/*-------------------------------------------------------------------------
 *
 * retry.c
 *		Retry policy: the SDKs' rules of wire-notes.md, the create class of
 *		design.md §3, anthropic.max_retry_wait, and the reconciliation of a
 *		repeated call's failed answer.
 *
 * Reconciliation exists because a retry (ours, or libcurl's silent re-send
 * on a dead keep-alive connection) can repeat a request the server already
 * carried out; the repeat then fails for the very reason that the first
 * one succeeded.  Each rule below accepts such a failure only when the
 * answer shows the state the call asked for, so a real conflict (someone
 * else's stop, another worker's lease) still fails.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>
#include <math.h>
#include <time.h>

#include "common/pg_prng.h"

#include "anthropic_env.h"
#include "retry.h"

static bool
status_is_retryable(long status, AeRetryClass cls)
{
	if (cls == AE_RETRY_CREATE)
		return status == 429 || status == 503 || status == 529;
	return status == 408 || status == 409 || status == 429 || status >= 500;
}

/* A number that is the whole header value, or -1. */
static double
header_number(const char *v)
{
	char	   *end;
	double		d;

	if (v == NULL)
		return -1;
	d = strtod(v, &end);
	if (end == v || *end != '\0' || !isfinite(d))
		return -1;
	return d;
}

/* The delay the server asks for in ms, or <= 0 when it asks for none. */
static double
server_delay_ms(const AeRetryHeaders *hdrs)
{
	double		delay = header_number(hdrs->retry_after_ms);

	if (delay <= 0 && hdrs->retry_after)
	{
		double		s = header_number(hdrs->retry_after);

		if (s >= 0)
			delay = s * 1000.0;
		else
		{
			time_t		t = curl_getdate(hdrs->retry_after, NULL);

			if (t > 0)
				delay = difftime(t, time(NULL)) * 1000.0;
		}
	}
	return delay;
}

AeRetryDecision
ae_retry_decide(AeRetryClass cls, AeAttemptEnd end, long status,
				const AeRetryHeaders *hdrs, int attempt)
{
	AeRetryDecision d = {false, 0, 0};
	bool		retry = false;
	double		asked = -1;

	if (attempt > ae_max_retries)
		return d;
	switch (end)
	{
		case AE_END_PERMANENT:
			return d;
		case AE_END_NOT_SENT:
			retry = true;
			break;
		case AE_END_LOST:
			retry = (cls == AE_RETRY_SAFE);
			break;
		case AE_END_ANSWER:
			if (status >= 200 && status < 300)
				return d;
			if (hdrs->should_retry && pg_strcasecmp(hdrs->should_retry, "true") == 0)
				retry = true;
			else if (hdrs->should_retry && pg_strcasecmp(hdrs->should_retry, "false") == 0)
				retry = false;
			else
				retry = status_is_retryable(status, cls);
			if (retry)
				asked = server_delay_ms(hdrs);
			break;
	}
	if (!retry)
		return d;

	/*
	 * A wait longer than the setting would hold the caller's transaction
	 * (the sync worker's too) for as long as the server likes: fail now.
	 */
	if (asked > 0 && asked > (double) ae_max_retry_wait_ms)
	{
		d.refused_wait_ms = asked >= (double) LONG_MAX ? LONG_MAX : (long) ceil(asked);
		return d;
	}
	if (asked <= 0)
	{
		double		base = Min(0.5 * pow(2.0, attempt - 1), 8.0);

		asked = base * (1.0 - pg_prng_double(&pg_global_prng_state) * 0.25) * 1000.0;
	}
	d.retry = true;
	d.delay_ms = (long) ceil(asked);
	return d;
}

bool
ae_retry_may_have_acted(AeAttemptEnd end, long status)
{
	if (end == AE_END_LOST)
		return true;
	/* A gateway's 5xx or a 408 can come after the server did the work. */
	return end == AE_END_ANSWER && (status == 408 || status >= 500);
}

static bool
str_is(const char *s, const char *want)
{
	return s != NULL && strcmp(s, want) == 0;
}

AeReconcileAction
ae_retry_reconcile(AeReconcileRule rule, long status, json_t *body,
				   const char *sent_expected, json_t **answer)
{
	AejError	err;
	bool		decoded = body != NULL && aej_decode_error(body, &err);

	*answer = NULL;
	switch (rule)
	{
		case AE_RECONCILE_NONE:
			break;
		case AE_RECONCILE_HEARTBEAT:
			{
				json_t	   *cs = decoded ? err.current_state : NULL;
				const char *state = aej_string(cs, "state");
				const char *last = aej_string(cs, "last_heartbeat");
				json_t	   *ttl = json_object_get(cs, "ttl_seconds");

				/*
				 * The lease carries a heartbeat the caller did not send as
				 * expected: the lost beat's.  Another worker's beat would
				 * look the same, which the README states; a lease held by
				 * nobody (queued, stopped, no heartbeat) is never taken.
				 */
				if (status != 412 || !json_is_object(cs) ||
					!(str_is(state, "active") || str_is(state, "stopping")) ||
					last == NULL || *last == '\0' || sent_expected == NULL ||
					strcmp(last, sent_expected) == 0)
					break;
				*answer = json_pack("{s:s, s:s, s:b, s:s}", "type", "work_heartbeat",
									"last_heartbeat", last, "lease_extended", 1,
									"state", state);
				if (*answer == NULL)
					break;
				if (json_is_integer(ttl))
					json_object_set(*answer, "ttl_seconds", ttl);
				return AE_RECONCILED_ANSWER;
			}
		case AE_RECONCILE_ARCHIVE:
			if ((status == 400 || status == 409) && decoded &&
				(str_is(err.error_code, "environment_archived") ||
				 (err.message && strstr(err.message, "already archived") != NULL)))
				return AE_RECONCILED_FETCH;
			break;
		case AE_RECONCILE_DELETE:
			if (status == 404)
				return AE_RECONCILED_DELETED;
			break;
		case AE_RECONCILE_STOP:
		case AE_RECONCILE_ACK:
			if (status == 409)
				return AE_RECONCILED_FETCH;
			break;
	}
	return AE_RECONCILED_NO;
}

bool
ae_retry_state_confirms(AeReconcileRule rule, json_t *object, bool force)
{
	const char *state = aej_string(object, "state");

	switch (rule)
	{
		case AE_RECONCILE_ARCHIVE:
			return aej_string(object, "archived_at") != NULL;
		case AE_RECONCILE_STOP:
			return str_is(state, "stopped") || (!force && str_is(state, "stopping"));
		case AE_RECONCILE_ACK:
			return str_is(state, "starting");
		default:
			return false;
	}
}
