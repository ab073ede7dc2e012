/*-------------------------------------------------------------------------
 *
 * redact.c
 *		Keeps the keys out of log lines and error messages.
 *
 * PostgreSQL itself can print a key: a reload logs "parameter
 * "anthropic.api_key" changed to "..."", and log_statement prints a SET or
 * ALTER SYSTEM that names one.  An emit_log_hook masks, in every message
 * before it is written anywhere, (1) any occurrence of a key now in force,
 * and (2) the quoted value that follows the name of a key setting.  When
 * the statement being run holds a key, it is not appended to the message
 * as STATEMENT, since that text is not the hook's to change.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "tcop/tcopprot.h"
#include "utils/elog.h"
#include "utils/memutils.h"

#include "anthropic_env.h"
#include "redact.h"

#define AE_MASK "********"

static emit_log_hook_type prev_emit_log_hook = NULL;

static const char *const key_settings[] = {
	"anthropic.api_key",
	"anthropic.environment_key",
};

/* Replaces every occurrence of secret in *s. */
static bool
mask_value(char **s, const char *secret)
{
	size_t		len = strlen(secret);
	const char *p;
	StringInfoData out;

	/* Short values would mask innocent text; real keys are long. */
	if (len < 8 || *s == NULL || strstr(*s, secret) == NULL)
		return false;
	initStringInfo(&out);
	for (p = *s; *p;)
	{
		const char *hit = strstr(p, secret);

		if (hit == NULL)
		{
			appendStringInfoString(&out, p);
			break;
		}
		appendBinaryStringInfo(&out, p, hit - p);
		appendStringInfoString(&out, AE_MASK);
		p = hit + len;
	}
	*s = out.data;
	return true;
}

/*
 * Masks the first quoted value after each mention of a key setting, as in
 * SET anthropic.api_key = '...' or parameter "anthropic.api_key" changed
 * to "...".
 */
static bool
mask_after_names(char **s)
{
	bool		changed = false;
	size_t		i;

	if (*s == NULL || strstr(*s, "anthropic.") == NULL)
		return false;
	for (i = 0; i < lengthof(key_settings); i++)
	{
		const char *name = key_settings[i];
		size_t		namelen = strlen(name);
		const char *from = *s;
		const char *hit;

		while ((hit = strstr(from, name)) != NULL)
		{
			const char *p = hit + namelen;
			const char *open;
			const char *close;
			StringInfoData out;

			if (*p == '"' || *p == '\'')
				p++;			/* the quote that closes the name itself */
			open = strpbrk(p, "'\"");
			if (open == NULL)
				break;
			close = strchr(open + 1, *open);
			if (close == NULL)
				close = open + strlen(open);
			initStringInfo(&out);
			appendBinaryStringInfo(&out, *s, open + 1 - *s);
			appendStringInfoString(&out, AE_MASK);
			appendStringInfoString(&out, close);
			from = out.data + (open + 1 - *s) + strlen(AE_MASK);
			*s = out.data;
			changed = true;
		}
	}
	return changed;
}

static void
redact_field(char **field)
{
	const char *api_key = ae_effective_api_key();

	if (*field == NULL)
		return;
	if (api_key)
		mask_value(field, api_key);
	if (ae_environment_key && *ae_environment_key)
		mask_value(field, ae_environment_key);
	mask_after_names(field);
}

/* Would the text show a key, by value or after a key setting's name? */
static bool
holds_key(const char *text)
{
	const char *api_key = ae_effective_api_key();
	size_t		i;

	if (text == NULL)
		return false;
	if (api_key && strlen(api_key) >= 8 && strstr(text, api_key))
		return true;
	if (ae_environment_key && strlen(ae_environment_key) >= 8 &&
		strstr(text, ae_environment_key))
		return true;
	for (i = 0; i < lengthof(key_settings); i++)
		if (strstr(text, key_settings[i]))
			return true;
	return false;
}

static void
ae_emit_log_hook(ErrorData *edata)
{
	MemoryContext old = MemoryContextSwitchTo(ErrorContext);

	if (!edata->hide_stmt && holds_key(debug_query_string))
		edata->hide_stmt = true;

	redact_field(&edata->message);
	redact_field(&edata->detail);
	redact_field(&edata->detail_log);
	redact_field(&edata->context);
	redact_field(&edata->internalquery);
	MemoryContextSwitchTo(old);

	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

void
ae_redact_install(void)
{
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = ae_emit_log_hook;
}
