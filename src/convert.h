/*-------------------------------------------------------------------------
 *
 * convert.h
 *		Conversion layer: parsed API answers (jansson) to PostgreSQL rows.
 *
 * Callers check an answer's shape with aej_check_shape() first; the
 * functions here then build values from that single parse, with no
 * detour through JSON text.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AE_CONVERT_H
#define AE_CONVERT_H

#include "access/htup.h"
#include "access/tupdesc.h"
#include "utils/jsonb.h"

#include "apijson.h"

/* Makes jansson allocate in the current memory context. */
extern void ae_jansson_use_palloc(void);

extern Jsonb *ae_json_to_jsonb(json_t *value);

/* JSON text (UTF-8) as jsonb, numbers as written; interruptible before. */
extern Jsonb *ae_text_to_jsonb(const char *utf8, size_t len);

/*
 * A successful answer's text as jsonb, or NULL with *why saying why it is
 * malformed.
 */
extern Jsonb *ae_answer_to_jsonb(const char *utf8, size_t len, const char **why);

/*
 * A jansson view of a jsonb answer for checks and typed columns; shallow
 * for a caller that takes its jsonb columns from raw (see convert.c).
 * NULL when nested deeper than jansson allowed, or out of memory.
 */
extern json_t *ae_jsonb_to_json(Jsonb *jb, bool shallow);

/* Member key of a jsonb object, or NULL when it is missing or null. */
extern Jsonb *ae_jsonb_member(Jsonb *obj, const char *key);

/* Element i of the array member key of a jsonb object, or NULL. */
extern Jsonb *ae_jsonb_array_item(Jsonb *page, const char *key, uint32 i);

/* raw is the answer built from its text, or NULL to build it from obj. */
extern HeapTuple ae_environment_tuple(TupleDesc desc, json_t *obj, Jsonb *raw);
extern HeapTuple ae_work_tuple(TupleDesc desc, json_t *obj, Jsonb *raw);
extern HeapTuple ae_heartbeat_tuple(TupleDesc desc, json_t *obj);
extern HeapTuple ae_queue_stats_tuple(TupleDesc desc, json_t *obj);

/* A UTF-8 string from the API as a server-encoded, palloc'd C string. */
extern char *ae_from_utf8(const char *s, size_t len);

#endif							/* AE_CONVERT_H */
