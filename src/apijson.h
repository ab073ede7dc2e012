/*-------------------------------------------------------------------------
 *
 * apijson.h
 *		Server-independent checks of API answers (jansson only).
 *
 * Nothing here includes postgres.h, so the fuzz target can link this file
 * alone: it parses a body, checks that it has the shape a row type needs,
 * decodes error bodies and parses RFC 3339 timestamps.  convert.c turns
 * what passed these checks into PostgreSQL values.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AE_APIJSON_H
#define AE_APIJSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

typedef enum AejShape
{
	AEJ_ENVIRONMENT,
	AEJ_ENVIRONMENT_DELETED,
	AEJ_WORK,
	AEJ_HEARTBEAT,
	AEJ_QUEUE_STATS,
	AEJ_PAGE					/* {data: [...], next_page} */
} AejShape;

/* What an error body says; the pointers point into the parsed body. */
typedef struct AejError
{
	const char *type;			/* error.type */
	const char *message;		/* error.message */
	const char *error_code;		/* error.details.error_code */
	const char *request_id;		/* request_id */
	json_t	   *current_state;	/* error.details.current_state (412) */
} AejError;

/* A parsed RFC 3339 timestamp, in UTC once offset is applied. */
typedef struct AejTime
{
	int			year,
				month,
				day,
				hour,
				minute,
				second;
	int			usec;
	int			offset_s;		/* seconds east of UTC */
} AejTime;

/* Parses any JSON text, scalars and null included; NULL on failure. */
extern json_t *aej_parse(const char *body, size_t len, char *errbuf, size_t errlen);

/*
 * Checks that value has the shape; returns NULL when it has, else a
 * message naming the offending field (static or written to errbuf).
 */
extern const char *aej_check_shape(json_t *value, AejShape shape,
								   char *errbuf, size_t errlen);

/* Fills err from an error body; false when the body is not one. */
extern bool aej_decode_error(json_t *root, AejError *err);

/* Parses YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM). */
extern bool aej_parse_time(const char *s, AejTime *t);

/* A string member, or NULL when absent, null or of another type. */
extern const char *aej_string(json_t *obj, const char *key);

#endif							/* AE_APIJSON_H */
