/*-------------------------------------------------------------------------
 *
 * retry.h
 *		Retry policy: which outcomes retry, how long to wait, and what an
 *		answer means when an earlier attempt may already have acted.
 *
 * The transport (http.c) asks ae_retry_decide() after every attempt; it
 * describes the attempt in the terms below and knows no policy.  The API
 * layer (api.c) asks ae_retry_reconcile() about a failed final answer of a
 * call whose earlier attempt may have reached the server.  Nothing here
 * knows libcurl handles or endpoints: the endpoint table names the rule.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AE_RETRY_H
#define AE_RETRY_H

#include "apijson.h"

typedef enum AeRetryClass
{
	AE_RETRY_SAFE,				/* GETs and POSTs whose repeat can be recognised */
	AE_RETRY_CREATE				/* only when the server surely did nothing */
} AeRetryClass;

/* How one attempt ended. */
typedef enum AeAttemptEnd
{
	AE_END_ANSWER,				/* an HTTP answer came back */
	AE_END_NOT_SENT,			/* failed before the request left */
	AE_END_LOST,				/* failed after the request may have left */
	AE_END_PERMANENT			/* a failure no retry can cure */
} AeAttemptEnd;

/* What an answer's headers say about retrying (NULL when absent). */
typedef struct AeRetryHeaders
{
	const char *should_retry;	/* x-should-retry */
	const char *retry_after_ms;
	const char *retry_after;
} AeRetryHeaders;

typedef struct AeRetryDecision
{
	bool		retry;
	long		delay_ms;		/* with retry */
	long		refused_wait_ms;	/* > 0: the server asked for longer than
									 * anthropic.max_retry_wait */
} AeRetryDecision;

/*
 * Decides after attempt number `attempt` (1-based).  hdrs is used only
 * with AE_END_ANSWER.
 */
extern AeRetryDecision ae_retry_decide(AeRetryClass cls, AeAttemptEnd end, long status,
									   const AeRetryHeaders *hdrs, int attempt);

/* Whether an attempt that ended so may have acted on the server. */
extern bool ae_retry_may_have_acted(AeAttemptEnd end, long status);

/* How a call's repeat shows in a failed answer: one rule per endpoint kind. */
typedef enum AeReconcileRule
{
	AE_RECONCILE_NONE,
	AE_RECONCILE_HEARTBEAT,		/* 412 showing the lease the lost beat set */
	AE_RECONCILE_ARCHIVE,		/* "already archived" */
	AE_RECONCILE_DELETE,		/* 404 */
	AE_RECONCILE_STOP,			/* 409 on an item stopped or stopping */
	AE_RECONCILE_ACK			/* 409 on an item now starting */
} AeReconcileRule;

typedef enum AeReconcileAction
{
	AE_RECONCILED_NO,			/* the failure stands */
	AE_RECONCILED_ANSWER,		/* *answer is the call's answer */
	AE_RECONCILED_DELETED,		/* the object is gone, as asked */
	AE_RECONCILED_FETCH			/* the object's state decides: fetch it */
} AeReconcileAction;

/*
 * Reads a failed final answer (status, parsed body or NULL).  sent_expected
 * is the heartbeat's expected_last_heartbeat, or NULL.  An ANSWER is built
 * in CurrentMemoryContext.
 */
extern AeReconcileAction ae_retry_reconcile(AeReconcileRule rule, long status, json_t *body,
											const char *sent_expected, json_t **answer);

/* After AE_RECONCILED_FETCH: whether the fetched object shows the call done. */
extern bool ae_retry_state_confirms(AeReconcileRule rule, json_t *object, bool force);

#endif							/* AE_RETRY_H */
