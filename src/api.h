/*-------------------------------------------------------------------------
 *
 * api.h
 *		API layer: the endpoint table, request building, error decoding.
 *
 * Every SQL function goes through ae_api_call() with an endpoint from the
 * table in api.c, which holds each endpoint's method, path template,
 * credential, retry class and answer shape.  Adding an endpoint means one
 * table entry and one SQL declaration.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AE_API_H
#define AE_API_H

#include "datatype/timestamp.h"
#include "utils/jsonb.h"

#include "apijson.h"
#include "endpoints.h"
#include "http.h"



#define AE_MAX_QUERY 4

typedef struct AeQueryParam
{
	const char *name;
	const char *value;			/* NULL: left out of the query string */
} AeQueryParam;

typedef struct AeCall
{
	AeEndpointId endpoint;
	const char *args[2];		/* path arguments, in server encoding */
	AeQueryParam query[AE_MAX_QUERY];
	const char *body;			/* JSON text in server encoding, or NULL */
	const char *worker_id;		/* anthropic-worker-id, or NULL */
	int			extra_timeout_ms;
	bool		no_retry;		/* one attempt only: the caller retries */
	bool		missing_ok;		/* a 404 returns NULL instead of raising */
	bool		stop_force;		/* work_stop's force, for reconciliation */
	bool		repeats;		/* repeats a call whose answer was lost: its
								 * failure is reconciled as a retry's is */
	/* When set, receives the answer as jsonb built from its text, or NULL. */
	Jsonb	  **raw_out;
} AeCall;

/* Shape every item of a list endpoint's page has. */
extern AejShape ae_endpoint_item_shape(AeEndpointId id);

/*
 * Sends the call and returns its answer, parsed and checked against the
 * endpoint's shape, in CurrentMemoryContext.  Returns NULL for a 404 when
 * missing_ok is set, and for a JSON null answer where the endpoint allows
 * one (poll); raises the SQLSTATE of design.md §1 for everything else.
 */
extern json_t *ae_api_call(const AeCall *call);

/*
 * Sends n calls of one endpoint with at most `concurrency` in flight and
 * stores each answer (as ae_api_call would return it) in results[i].
 * The first error raises, once every transfer has been stopped.
 */
extern void ae_api_call_many(const AeCall *calls, int n, int concurrency, json_t **results);

/* One answer of ae_api_call_each(). */
typedef struct AeCallOutcome
{
	json_t	   *answer;			/* as ae_api_call would return it */
	ErrorData  *error;			/* what ae_api_call would raise, or NULL */
	long		status;			/* HTTP status; 0 for a transport failure */
	json_t	   *failed_body;	/* with error: the answer's JSON body, or NULL */
	bool		maybe_acted;	/* status 0: the request may have reached the server */
	TimestampTz ended;			/* when its last attempt ended */
	bool		began;			/* ae_api_call_each() only: the request may
								 * have reached the server; set, with status,
								 * even when the batch raised (a cancel) */
} AeCallOutcome;

/*
 * Sends n calls with at most `concurrency` in flight and reports each
 * one's outcome instead of raising: one failing call costs the others
 * nothing.  Interrupts still raise, with each out[i].began filled in.
 */
extern void ae_api_call_each(const AeCall *calls, int n, int concurrency, AeCallOutcome *out);

/*
 * Called when a call of ae_api_call_chains() has its outcome; returns the
 * call to send next in its place (it must stay valid until the batch
 * ends), or NULL.  Runs inside the batch: it must not send requests.
 */
typedef const AeCall *(*AeChainNext) (void *arg, int chain, const AeCall *call,
									  const AeCallOutcome *outcome);

/*
 * Like ae_api_call_each(), for n chains of calls: once a call has its
 * answer, next() may name the chain's next call, which goes out at once
 * instead of after the whole batch (a poll's ack need not wait for the
 * other polls).  out[i] receives chain i's last outcome.
 */
extern void ae_api_call_chains(const AeCall *calls, int n, int concurrency,
							   AeChainNext next, void *arg, AeCallOutcome *out);

/* Raises 22023 unless id is acceptable as a path segment. */
extern void ae_check_id(const char *argname, const char *id);

/* Raises 22023 unless 1 <= value <= 1000. */
extern void ae_check_page_size(const char *argname, int value);

#endif							/* AE_API_H */
