/*-------------------------------------------------------------------------
 *
 * sqlfuncs.h
 *		Helpers shared by the SQL-callable functions (env.c, work.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AE_SQLFUNCS_H
#define AE_SQLFUNCS_H

#include "fmgr.h"
#include "access/tupdesc.h"
#include "utils/jsonb.h"

#include "api.h"

/*
 * Runs body (a function returning a composite or NULL) once per row for all
 * copies of one call site, as (f(x)).* makes them; sqlfuncs.c has the rule.
 */
extern Datum ae_call_once(FunctionCallInfo fcinfo, Datum (*body) (FunctionCallInfo fcinfo));

/* The function's composite result type, cached for the query's lifetime. */
extern TupleDesc ae_result_desc(FunctionCallInfo fcinfo);

/*
 * A text argument as a C string.  (text_to_cstring() lives in
 * utils/builtins.h, which cannot be included beside jansson.h.)
 */
extern char *ae_text_arg(FunctionCallInfo fcinfo, int argno);

/*
 * An id argument, checked as a path segment (22023 otherwise).  NULL is an
 * error here, for the functions that cannot be STRICT.
 */
extern char *ae_id_arg(FunctionCallInfo fcinfo, int argno, const char *argname);

/* Raises 22023 unless the jsonb is an object; returns it as JSON text. */
extern char *ae_object_body(const char *argname, Jsonb *body);

/*
 * A value-per-call SRF over a paginated list endpoint: fetches one page at
 * a time, lazily, so LIMIT stops further requests and memory stays at one
 * page.  call describes the first request; its query slot named "page"
 * receives each next cursor.
 */
extern Datum ae_list_srf(FunctionCallInfo fcinfo, const AeCall *call);

#endif							/* AE_SQLFUNCS_H */
