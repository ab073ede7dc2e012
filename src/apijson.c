/*-------------------------------------------------------------------------
 *
 * apijson.c
 *		Server-independent checks of API answers; see apijson.h.
 *
 * The shape tables say, per row type, which members must be of which JSON
 * type.  A member that is absent or null is always accepted (the API
 * leaves many fields out), except where a table marks it required.
 *
 *-------------------------------------------------------------------------
 */
#include "apijson.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum AejType
{
	AEJ_T_STRING,
	AEJ_T_TIME,
	AEJ_T_OBJECT,
	AEJ_T_ARRAY,
	AEJ_T_BOOL,
	AEJ_T_INT,					/* fits int32 */
	AEJ_T_BIGINT
} AejType;

typedef struct AejField
{
	const char *name;
	AejType		type;
	bool		required;
} AejField;

static const AejField env_fields[] = {
	{"id", AEJ_T_STRING, true},
	{"name", AEJ_T_STRING, false},
	{"description", AEJ_T_STRING, false},
	{"config", AEJ_T_OBJECT, false},
	{"metadata", AEJ_T_OBJECT, false},
	{"scope", AEJ_T_STRING, false},
	{"created_at", AEJ_T_TIME, false},
	{"updated_at", AEJ_T_TIME, false},
	{"archived_at", AEJ_T_TIME, false},
	{NULL}
};

static const AejField deleted_fields[] = {
	{"id", AEJ_T_STRING, true},
	{NULL}
};

static const AejField work_fields[] = {
	{"id", AEJ_T_STRING, true},
	{"environment_id", AEJ_T_STRING, false},
	{"state", AEJ_T_STRING, false},
	{"data", AEJ_T_OBJECT, false},
	{"metadata", AEJ_T_OBJECT, false},
	{"created_at", AEJ_T_TIME, false},
	{"acknowledged_at", AEJ_T_TIME, false},
	{"started_at", AEJ_T_TIME, false},
	{"latest_heartbeat_at", AEJ_T_TIME, false},
	{"stop_requested_at", AEJ_T_TIME, false},
	{"stopped_at", AEJ_T_TIME, false},
	{"secret", AEJ_T_STRING, false},
	{NULL}
};

static const AejField heartbeat_fields[] = {
	{"last_heartbeat", AEJ_T_STRING, false},
	{"lease_extended", AEJ_T_BOOL, false},
	{"state", AEJ_T_STRING, false},
	{"ttl_seconds", AEJ_T_INT, false},
	{NULL}
};

static const AejField stats_fields[] = {
	{"depth", AEJ_T_BIGINT, false},
	{"pending", AEJ_T_BIGINT, false},
	{"oldest_queued_at", AEJ_T_TIME, false},
	{"workers_polling", AEJ_T_INT, false},
	{NULL}
};

static const AejField page_fields[] = {
	{"data", AEJ_T_ARRAY, true},
	{"next_page", AEJ_T_STRING, false},
	{NULL}
};

static const char *const type_names[] = {
	"a string", "an RFC 3339 timestamp", "an object", "an array", "a boolean", "an integer", "an integer"
};

/*
 * A copy of a JSON text in which every number that a double cannot hold
 * (1e400, a 400-digit integer) is replaced by a 0 padded with spaces, so
 * that positions stay the same.  One pass; strings are skipped.  NULL when
 * out of memory.
 */
static char *
tame_numbers(const char *body, size_t len)
{
	char	   *copy = malloc(len + 1);
	size_t		i = 0;

	if (copy == NULL)
		return NULL;
	memcpy(copy, body, len);
	copy[len] = '\0';
	while (i < len)
	{
		char		c = copy[i];

		if (c == '"')
		{
			for (i++; i < len && copy[i] != '"'; i++)
				if (copy[i] == '\\')
					i++;
			i++;
		}
		else if (c == '-' || isdigit((unsigned char) c))
		{
			size_t		start = i;
			char		save;
			double		d;

			while (i < len && (isdigit((unsigned char) copy[i]) || copy[i] == '-' ||
							   copy[i] == '+' || copy[i] == '.' ||
							   copy[i] == 'e' || copy[i] == 'E'))
				i++;
			save = copy[i];
			copy[i] = '\0';
			errno = 0;
			d = strtod(copy + start, NULL);
			copy[i] = save;
			if (errno == ERANGE && (d == HUGE_VAL || d == -HUGE_VAL))
			{
				copy[start] = '0';
				memset(copy + start + 1, ' ', i - start - 1);
			}
		}
		else
			i++;
	}
	return copy;
}

json_t *
aej_parse(const char *body, size_t len, char *errbuf, size_t errlen)
{
	json_error_t jerr;
	json_t	   *root;

	root = json_loadb(body, len, JSON_DECODE_ANY, &jerr);

	/*
	 * Numbers beyond int64 or beyond a double are valid JSON, and the raw
	 * column keeps them as written (convert.c builds raw from the text);
	 * jansson refuses them.  For the checks here, integers are read as reals
	 * and numbers no double holds as 0: the typed columns hold no numbers.
	 */
	if (root == NULL && json_error_code(&jerr) == json_error_numeric_overflow)
		root = json_loadb(body, len, JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL, &jerr);
	if (root == NULL && json_error_code(&jerr) == json_error_numeric_overflow)
	{
		char	   *tame = tame_numbers(body, len);

		if (tame == NULL)
		{
			if (errbuf && errlen > 0)
				snprintf(errbuf, errlen, "out of memory");
			return NULL;
		}
		root = json_loadb(tame, len, JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL, &jerr);
		free(tame);
	}
	if (root == NULL && errbuf && errlen > 0)
		snprintf(errbuf, errlen, "%s at line %d, column %d",
				 jerr.text, jerr.line, jerr.column);
	return root;
}

const char *
aej_string(json_t *obj, const char *key)
{
	json_t	   *v = json_object_get(obj, key);

	return json_is_string(v) ? json_string_value(v) : NULL;
}

static bool
has_type(json_t *v, AejType type)
{
	AejTime		t;

	switch (type)
	{
		case AEJ_T_STRING:
			return json_is_string(v);
		case AEJ_T_TIME:
			return json_is_string(v) && aej_parse_time(json_string_value(v), &t);
		case AEJ_T_OBJECT:
			return json_is_object(v);
		case AEJ_T_ARRAY:
			return json_is_array(v);
		case AEJ_T_BOOL:
			return json_is_boolean(v);
		case AEJ_T_INT:
			return json_is_integer(v) &&
				json_integer_value(v) >= INT32_MIN && json_integer_value(v) <= INT32_MAX;
		case AEJ_T_BIGINT:
			return json_is_integer(v);
	}
	return false;
}

static const char *
check_fields(json_t *obj, const AejField *fields, char *errbuf, size_t errlen)
{
	const AejField *f;

	for (f = fields; f->name; f++)
	{
		json_t	   *v = json_object_get(obj, f->name);

		if (v == NULL || json_is_null(v))
		{
			if (f->required)
			{
				snprintf(errbuf, errlen, "The answer has no \"%s\".", f->name);
				return errbuf;
			}
			continue;
		}
		if (!has_type(v, f->type))
		{
			snprintf(errbuf, errlen, "Field \"%s\" is not %s.", f->name, type_names[f->type]);
			return errbuf;
		}
	}
	return NULL;
}

const char *
aej_check_shape(json_t *value, AejShape shape, char *errbuf, size_t errlen)
{
	const AejField *fields = NULL;
	const char *msg;

	if (!json_is_object(value))
		return "The answer is not a JSON object.";

	switch (shape)
	{
		case AEJ_ENVIRONMENT:
			fields = env_fields;
			break;
		case AEJ_ENVIRONMENT_DELETED:
			fields = deleted_fields;
			break;
		case AEJ_WORK:
			fields = work_fields;
			break;
		case AEJ_HEARTBEAT:
			fields = heartbeat_fields;
			break;
		case AEJ_QUEUE_STATS:
			fields = stats_fields;
			break;
		case AEJ_PAGE:
			fields = page_fields;
			break;
	}
	msg = check_fields(value, fields, errbuf, errlen);
	if (msg)
		return msg;

	if (shape == AEJ_ENVIRONMENT)
	{
		json_t	   *config = json_object_get(value, "config");

		if (json_is_object(config) && json_object_get(config, "type") &&
			!json_is_null(json_object_get(config, "type")) &&
			!json_is_string(json_object_get(config, "type")))
			return "Field \"config.type\" is not a string.";
	}
	else if (shape == AEJ_WORK)
	{
		json_t	   *data = json_object_get(value, "data");
		const char *const keys[] = {"type", "id"};
		int			i;

		for (i = 0; i < 2 && json_is_object(data); i++)
		{
			json_t	   *v = json_object_get(data, keys[i]);

			if (v && !json_is_null(v) && !json_is_string(v))
			{
				snprintf(errbuf, errlen, "Field \"data.%s\" is not a string.", keys[i]);
				return errbuf;
			}
		}
	}
	return NULL;
}

bool
aej_decode_error(json_t *root, AejError *err)
{
	json_t	   *e;
	json_t	   *details;

	memset(err, 0, sizeof(*err));
	if (!json_is_object(root))
		return false;
	err->request_id = aej_string(root, "request_id");
	e = json_object_get(root, "error");
	if (!json_is_object(e))
		return false;
	err->type = aej_string(e, "type");
	err->message = aej_string(e, "message");
	details = json_object_get(e, "details");
	if (json_is_object(details))
	{
		json_t	   *cs = json_object_get(details, "current_state");

		err->error_code = aej_string(details, "error_code");
		if (json_is_object(cs))
			err->current_state = cs;
	}
	return err->type != NULL || err->message != NULL;
}

static bool
take_digits(const char **p, int n, int *out)
{
	int			v = 0;
	int			i;

	for (i = 0; i < n; i++)
	{
		if (!isdigit((unsigned char) (*p)[i]))
			return false;
		v = v * 10 + ((*p)[i] - '0');
	}
	*p += n;
	*out = v;
	return true;
}

bool
aej_parse_time(const char *s, AejTime *t)
{
	const char *p = s;
	static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

	memset(t, 0, sizeof(*t));
	if (!take_digits(&p, 4, &t->year) || *p++ != '-' ||
		!take_digits(&p, 2, &t->month) || *p++ != '-' ||
		!take_digits(&p, 2, &t->day) || (*p != 'T' && *p != 't' && *p != ' '))
		return false;
	p++;
	if (!take_digits(&p, 2, &t->hour) || *p++ != ':' ||
		!take_digits(&p, 2, &t->minute) || *p++ != ':' ||
		!take_digits(&p, 2, &t->second))
		return false;
	if (*p == '.')
	{
		int			digits = 0;

		p++;
		if (!isdigit((unsigned char) *p))
			return false;
		/* Keep microseconds; finer digits are dropped, as PostgreSQL rounds little. */
		while (isdigit((unsigned char) *p))
		{
			if (digits < 6)
			{
				t->usec = t->usec * 10 + (*p - '0');
				digits++;
			}
			p++;
		}
		while (digits++ < 6)
			t->usec *= 10;
	}
	if (*p == 'Z' || *p == 'z')
		p++;
	else if (*p == '+' || *p == '-')
	{
		int			sign = (*p == '-') ? -1 : 1;
		int			oh,
					om;

		p++;
		if (!take_digits(&p, 2, &oh) || *p++ != ':' || !take_digits(&p, 2, &om) ||
			oh > 23 || om > 59)
			return false;
		t->offset_s = sign * (oh * 3600 + om * 60);
	}
	else
		return false;
	if (*p != '\0')
		return false;

	if (t->year < 1 || t->month < 1 || t->month > 12 || t->day < 1 ||
		t->day > mdays[t->month - 1] || t->hour > 23 || t->minute > 59 ||
		t->second > 60)
		return false;
	if (t->month == 2 && t->day == 29 &&
		!((t->year % 4 == 0 && t->year % 100 != 0) || t->year % 400 == 0))
		return false;
	return true;
}
