/*-------------------------------------------------------------------------
 *
 * http.h
 *		Transport layer: one request to the API, with retries.
 *
 * The caller (api.c) says what to send; this layer owns libcurl, the
 * headers, timeouts, interrupts and the response-size cap.  It asks the
 * retry policy (retry.h) after each attempt, and tells the caller about
 * each call's final outcome through the request's on_final callback (for
 * statistics).  It knows nothing of endpoints or JSON.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AE_HTTP_H
#define AE_HTTP_H

#include "datatype/timestamp.h"
#include "retry.h"

typedef enum AeCredential
{
	AE_CRED_API_KEY,			/* x-api-key */
	AE_CRED_ENVIRONMENT			/* Bearer environment key, else x-api-key */
} AeCredential;

typedef enum AeMethod
{
	AE_GET,
	AE_POST,
	AE_DELETE
} AeMethod;

struct AeHttpResponse;

typedef struct AeHttpRequest
{
	AeMethod	method;
	const char *method_name;
	const char *path;			/* encoded path and query, from "/v1/..." */
	const char *body;			/* UTF-8 JSON, or NULL for none */
	size_t		body_len;
	AeCredential credential;
	bool		workspace;		/* send anthropic-workspace-id if set */
	const char *worker_id;		/* anthropic-worker-id, or NULL */
	const char *bearer_key;		/* this environment's own key, or NULL */
	AeRetryClass retry;
	bool		no_retry;		/* one attempt only: the caller retries */
	int			extra_timeout_ms;	/* a long poll's block_ms */
	/* Called once per call with its final outcome, before any raise. */
	void		(*on_final) (void *arg, const struct AeHttpResponse *resp);
	void	   *on_final_arg;

	/*
	 * ae_http_execute_each() only: called inside the batch once the call
	 * has its final answer (status 0: a transport failure); returns the
	 * request to send next in its place, whose answer then replaces this
	 * one's in the same response, or NULL.  It must not raise, nor send a
	 * request itself.
	 */
	const struct AeHttpRequest *(*then) (void *arg, struct AeHttpResponse *resp);
	void	   *then_arg;
} AeHttpRequest;

typedef struct AeHttpResponse
{
	long		status;
	char	   *body;			/* palloc'd, NUL-terminated */
	size_t		body_len;
	char		request_id[128];
	bool		json_content;	/* content type is application/json */
	int			attempts;
	char	   *transport_error;	/* ae_http_execute_each(): why status is 0 */
	bool		transport_failed;	/* no answer: status is 0 */
	/*
	 * An earlier attempt, a re-send by libcurl, or (transport_failed) the
	 * last attempt may have reached the server.  An attempt that failed
	 * before the request left (no connection) never sets it.
	 */
	bool		maybe_acted;
	/*
	 * libcurl began sending the request in some attempt, whatever followed,
	 * and even when this layer raised before the call ended (a cancel): the
	 * server may have it.  Unset, the request cannot have reached it.
	 */
	bool		began;
	long		refused_wait_ms;	/* > 0: a retry-after beyond max_retry_wait */
	int64		elapsed_us;		/* from the first attempt's start */
	TimestampTz ended;			/* when the last attempt ended */
	uint64		bytes_sent;
	uint64		bytes_received;
} AeHttpResponse;

/*
 * Performs the request with the retry policy, in CurrentMemoryContext.
 * Returns the last HTTP answer, whatever its status; raises 08006 for a
 * transport failure and 54000 for an oversized body once retries are
 * spent.  Query cancel and termination interrupt it at any point.
 */
extern void ae_http_execute(const AeHttpRequest *req, AeHttpResponse *resp);

/*
 * When set, called at every turn of a transfer's poll loop (at least every
 * 20 ms while a request is in flight), for a background worker with a duty
 * that must not wait for a slow batch to end.  It must be cheap, must not
 * raise, and must not call into this layer.  Only the process that sets it
 * has it: it is set after fork, never in the postmaster.
 */
typedef void (*ae_http_wait_hook_type) (void);
extern ae_http_wait_hook_type ae_http_wait_hook;

/* Most transfers a batch runs at once. */
#define AE_MAX_CONCURRENCY 64

/*
 * Performs n requests with at most `concurrency` in flight, each with the
 * retry policy.  Returns -1 when all have their final answer in resps, or
 * the index of the first final answer for which stop_at(status) is true,
 * after stopping the others.  A transport failure stops the others and is
 * raised.  Interrupts stop everything at any point.
 */
extern int	ae_http_execute_many(const AeHttpRequest *reqs, AeHttpResponse *resps, int n,
								 int concurrency, bool (*stop_at) (long status));

/*
 * Performs n requests with at most `concurrency` in flight, each with the
 * retry policy, until every one has its final answer.  A transport failure
 * ends only its own request: its answer has status 0 and transport_error
 * says why.  For callers that must act on each answer, such as a lease
 * keeper beating hundreds of leases, where one bad item must not cost the
 * others their beat.  Interrupts stop everything at any point.
 */
extern void ae_http_execute_each(const AeHttpRequest *reqs, AeHttpResponse *resps, int n,
								 int concurrency);

#endif							/* AE_HTTP_H */
