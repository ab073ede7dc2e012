/*-------------------------------------------------------------------------
 *
 * fuzz_apijson.c
 *		libFuzzer target for the server-independent answer checks.
 *
 * Each input is taken as an HTTP response body, the way api.c sees it:
 * parsed with aej_parse(), checked against every shape (and, for a page,
 * every item against the item shapes), decoded as an error body, and every
 * string anywhere in it is given to aej_parse_time().  The raw input is also
 * given to aej_parse_time() as a string.  No PostgreSQL: this links
 * src/apijson.c and jansson only.
 *
 * Besides the sanitizers (address, undefined), the target checks the
 * promises the callers rely on and aborts when one is broken:
 *   - a shape check that passes means the required members are there with
 *     the right JSON type (convert.c reads them without checking again);
 *   - a failed check returns a non-empty, NUL-terminated message;
 *   - a decoded error points only at strings (or the current_state object);
 *   - a parsed time has its fields in range.
 *
 * Build and run: make fuzz [FUZZ_SECONDS=60]
 *
 *-------------------------------------------------------------------------
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "apijson.h"

#define CHECK(cond) \
	do { \
		if (!(cond)) \
		{ \
			fprintf(stderr, "fuzz_apijson: broken promise: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
			abort(); \
		} \
	} while (0)

static const AejShape all_shapes[] = {
	AEJ_ENVIRONMENT, AEJ_ENVIRONMENT_DELETED, AEJ_WORK, AEJ_HEARTBEAT, AEJ_QUEUE_STATS, AEJ_PAGE
};

static void
check_time(const char *s)
{
	AejTime		t;
	static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

	if (!aej_parse_time(s, &t))
		return;
	CHECK(t.year >= 1 && t.year <= 9999);
	CHECK(t.month >= 1 && t.month <= 12);
	CHECK(t.day >= 1 && t.day <= mdays[t.month - 1]);
	CHECK(t.hour >= 0 && t.hour <= 23);
	CHECK(t.minute >= 0 && t.minute <= 59);
	CHECK(t.second >= 0 && t.second <= 60);
	CHECK(t.usec >= 0 && t.usec <= 999999);
	CHECK(t.offset_s > -24 * 3600 && t.offset_s < 24 * 3600);
	/* RFC 3339: at least "YYYY-MM-DDTHH:MM:SSZ" */
	CHECK(strlen(s) >= 20);
}

/* Every string value anywhere in the document, and every member name. */
static void
walk(json_t *v, int depth)
{
	const char *key;
	json_t	   *member;
	size_t		i;

	if (depth > 4096)
		return;
	if (json_is_string(v))
		check_time(json_string_value(v));
	else if (json_is_object(v))
	{
		json_object_foreach(v, key, member)
		{
			const char *s = aej_string(v, key);

			check_time(key);
			if (s)
				CHECK(json_is_string(json_object_get(v, key)));
			walk(member, depth + 1);
		}
	}
	else if (json_is_array(v))
	{
		json_array_foreach(v, i, member)
			walk(member, depth + 1);
	}
}

/* What a passing shape check promises to convert.c. */
static void
check_promises(json_t *v, AejShape shape)
{
	json_t	   *data;

	CHECK(json_is_object(v));
	switch (shape)
	{
		case AEJ_ENVIRONMENT:
		case AEJ_ENVIRONMENT_DELETED:
		case AEJ_WORK:
			CHECK(json_is_string(json_object_get(v, "id")));
			break;
		case AEJ_PAGE:
			data = json_object_get(v, "data");
			CHECK(json_is_array(data));
			break;
		default:
			break;
	}
}

static void
check_shape(json_t *v, AejShape shape)
{
	char		errbuf[256];
	const char *msg;

	memset(errbuf, 'x', sizeof(errbuf));
	msg = aej_check_shape(v, shape, errbuf, sizeof(errbuf));
	if (msg == NULL)
	{
		check_promises(v, shape);
		if (shape == AEJ_PAGE)
		{
			json_t	   *item;
			size_t		i;

			json_array_foreach(json_object_get(v, "data"), i, item)
			{
				check_shape(item, AEJ_ENVIRONMENT);
				check_shape(item, AEJ_WORK);
			}
		}
	}
	else
	{
		size_t		n = strnlen(msg, sizeof(errbuf) + 1024);

		CHECK(n > 0 && n < sizeof(errbuf) + 1024);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char		errbuf[256];
	char	   *text;
	json_t	   *root;
	AejError	err;
	size_t		i;

	/* The whole input as a timestamp string. */
	text = malloc(size + 1);
	if (text == NULL)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	check_time(text);
	free(text);

	root = aej_parse((const char *) data, size, errbuf, sizeof(errbuf));
	if (root == NULL)
	{
		CHECK(strnlen(errbuf, sizeof(errbuf)) < sizeof(errbuf));
		return 0;
	}

	for (i = 0; i < sizeof(all_shapes) / sizeof(all_shapes[0]); i++)
		check_shape(root, all_shapes[i]);

	if (aej_decode_error(root, &err))
	{
		CHECK(err.type != NULL || err.message != NULL);
		if (err.type)
			(void) strlen(err.type);
		if (err.message)
			(void) strlen(err.message);
		if (err.error_code)
			(void) strlen(err.error_code);
		if (err.request_id)
			(void) strlen(err.request_id);
		if (err.current_state)
		{
			/* api.c prints it into the DETAIL. */
			char	   *cs = json_dumps(err.current_state, JSON_COMPACT | JSON_SORT_KEYS);

			CHECK(json_is_object(err.current_state));
			free(cs);
		}
	}
	else
	{
		/* Never decoded from something that is not an error object. */
		CHECK(err.type == NULL && err.message == NULL);
	}

	walk(root, 0);
	json_decref(root);
	return 0;
}
