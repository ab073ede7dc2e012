/*-------------------------------------------------------------------------
 *
 * redact.c
 *		Keeps the keys out of log lines, error messages and
 *		pg_stat_activity.
 *
 * PostgreSQL itself can print a key: a reload logs "parameter
 * "anthropic.api_key" changed to "..."", log_statement prints a SET or
 * ALTER SYSTEM that names one, an error appends its STATEMENT, and
 * pg_stat_activity shows the text of the last statement.  Two hooks close
 * these paths:
 *
 * - an emit_log_hook masks, in every message before it is written
 *   anywhere, any key now in force, anything shaped like an Anthropic key
 *   ("sk-ant-..."), and the quoted value that follows the name of a key
 *   setting; a logged statement that names a key setting is
 *   replaced as a whole (names are matched case-insensitively, so quoting
 *   or spacing tricks do not matter), and such a statement is never
 *   appended as STATEMENT;
 * - a ProcessUtility_hook replaces the activity text of SET, RESET and
 *   ALTER SYSTEM statements on a key.
 *
 * A key of another shape passed as a parameter of a prepared statement is
 * not recognizable until it is in force; the README says to keep keys out
 * of SQL text.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "lib/stringinfo.h"
#include "nodes/parsenodes.h"
#include "pgstat.h"
#include "tcop/tcopprot.h"
#include "tcop/utility.h"
#include "utils/backend_status.h"
#include "utils/elog.h"
#include "utils/memutils.h"

#include "anthropic_env.h"
#include "redact.h"

#define AE_MASK "********"
#define AE_STATEMENT_MASK "<a statement that sets an Anthropic key, not shown>"

static emit_log_hook_type prev_emit_log_hook = NULL;

/* Keys that are not settings, in TopMemoryContext. */
static List *registered_secrets = NIL;
static ProcessUtility_hook_type prev_process_utility_hook = NULL;

/* Parts of the key settings' names, matched case-insensitively. */
static const char *const key_words[] = {"api_key", "environment_key"};

/* Messages that carry a whole statement's text. */
static const char *const statement_prefixes[] = {"statement: ", "execute ", "duration: "};

static const char *
find_ci(const char *haystack, const char *needle)
{
	size_t		n = strlen(needle);

	for (; *haystack; haystack++)
		if (pg_strncasecmp(haystack, needle, n) == 0)
			return haystack;
	return NULL;
}

/* Does the text name a key setting, however it is quoted or cased? */
static bool
names_key_setting(const char *text)
{
	size_t		i;

	if (text == NULL || find_ci(text, "anthropic") == NULL)
		return false;
	for (i = 0; i < lengthof(key_words); i++)
		if (find_ci(text, key_words[i]))
			return true;
	return false;
}

/* Replaces every occurrence of secret in *s. */
static void
mask_value(char **s, const char *secret)
{
	size_t		len = strlen(secret);
	const char *p;
	StringInfoData out;

	/* Short values would mask innocent text; real keys are long. */
	if (len < 8 || strstr(*s, secret) == NULL)
		return;
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
}

void
ae_redact_register_secret(const char *value)
{
	ListCell   *lc;
	MemoryContext old;

	foreach(lc, registered_secrets)
		if (strcmp((const char *) lfirst(lc), value) == 0)
			return;
	old = MemoryContextSwitchTo(TopMemoryContext);
	registered_secrets = lappend(registered_secrets, pstrdup(value));
	MemoryContextSwitchTo(old);
}

/* Masks every "sk-ant-..." token: the shape of Anthropic keys. */
static void
mask_key_shapes(char **s)
{
	const char *p;
	StringInfoData out;

	if (strstr(*s, "sk-ant-") == NULL)
		return;
	initStringInfo(&out);
	for (p = *s; *p;)
	{
		const char *hit = strstr(p, "sk-ant-");
		const char *end;

		if (hit == NULL)
		{
			appendStringInfoString(&out, p);
			break;
		}
		appendBinaryStringInfo(&out, p, hit - p);
		end = hit + strlen("sk-ant-");
		while (isalnum((unsigned char) *end) || *end == '-' || *end == '_')
			end++;
		appendStringInfoString(&out, "sk-ant-" AE_MASK);
		p = end;
	}
	*s = out.data;
}

/*
 * Finds the first quoted value at or after p: '...', "..." or $tag$...$tag$.
 * Sets *start and *end to its contents; false when there is none.
 */
static bool
next_quoted(const char *p, const char **start, const char **end)
{
	for (; *p; p++)
	{
		if (*p == '\'' || *p == '"')
		{
			const char *close = strchr(p + 1, *p);

			*start = p + 1;
			*end = close ? close : p + strlen(p);
			return true;
		}
		if (*p == '$')
		{
			const char *q = p + 1;

			while (*q && (isalnum((unsigned char) *q) || *q == '_'))
				q++;
			if (*q == '$')
			{
				size_t		taglen = q - p + 1;
				const char *close = q + 1;

				while ((close = strchr(close, '$')) != NULL &&
					   strncmp(close, p, taglen) != 0)
					close++;
				*start = q + 1;
				*end = close ? close : q + 1 + strlen(q + 1);
				return true;
			}
		}
	}
	return false;
}

/*
 * Masks the first quoted value after each mention of a key setting, as in
 * parameter "anthropic.api_key" changed to "...".
 */
static void
mask_after_names(char **s)
{
	size_t		i;

	if (!names_key_setting(*s))
		return;
	for (i = 0; i < lengthof(key_words); i++)
	{
		const char *from = *s;
		const char *hit;

		while ((hit = find_ci(from, key_words[i])) != NULL)
		{
			const char *p = hit + strlen(key_words[i]);
			const char *start;
			const char *end;
			StringInfoData out;
			size_t		resume;

			/* Step over the quote that closes the name itself. */
			if (*p == '"' || *p == '\'')
				p++;
			if (!next_quoted(p, &start, &end))
				break;
			initStringInfo(&out);
			appendBinaryStringInfo(&out, *s, start - *s);
			appendStringInfoString(&out, AE_MASK);
			resume = out.len;
			appendStringInfoString(&out, end);
			*s = out.data;
			from = out.data + resume;
		}
	}
}

/* A logged statement that names a key setting is replaced as a whole. */
static bool
mask_statement(char **s)
{
	size_t		i;

	for (i = 0; i < lengthof(statement_prefixes); i++)
	{
		const char *prefix = statement_prefixes[i];
		const char *cut;

		if (strncmp(*s, prefix, strlen(prefix)) != 0 || !names_key_setting(*s))
			continue;
		/* Keep "statement: ", "execute <name>: ", "duration: ... statement: ". */
		cut = strstr(*s, "statement: ");
		if (cut)
			cut += strlen("statement: ");
		else if ((cut = strstr(*s, ": ")) != NULL)
			cut += 2;
		else
			cut = *s;
		*s = psprintf("%.*s%s", (int) (cut - *s), *s, AE_STATEMENT_MASK);
		return true;
	}
	return false;
}

static void
redact_field(char **field, bool may_be_statement)
{
	const char *api_key = ae_effective_api_key();
	ListCell   *lc;

	if (*field == NULL)
		return;
	if (api_key)
		mask_value(field, api_key);
	if (ae_environment_key && *ae_environment_key)
		mask_value(field, ae_environment_key);
	foreach(lc, registered_secrets)
		mask_value(field, (const char *) lfirst(lc));
	mask_key_shapes(field);
	if (may_be_statement && mask_statement(field))
		return;
	mask_after_names(field);
}

/* Would the statement's text show a key, by value or by setting name? */
static bool
holds_key(const char *text)
{
	const char *api_key = ae_effective_api_key();
	ListCell   *lc;

	if (text == NULL)
		return false;
	if (api_key && strlen(api_key) >= 8 && strstr(text, api_key))
		return true;
	if (ae_environment_key && strlen(ae_environment_key) >= 8 &&
		strstr(text, ae_environment_key))
		return true;
	foreach(lc, registered_secrets)
		if (strlen((const char *) lfirst(lc)) >= 8 && strstr(text, (const char *) lfirst(lc)))
			return true;
	return strstr(text, "sk-ant-") != NULL || names_key_setting(text);
}

static void
ae_emit_log_hook(ErrorData *edata)
{
	MemoryContext old = MemoryContextSwitchTo(ErrorContext);

	if (!edata->hide_stmt && holds_key(debug_query_string))
		edata->hide_stmt = true;
	redact_field(&edata->message, true);
	redact_field(&edata->detail, false);
	redact_field(&edata->detail_log, false);
	redact_field(&edata->context, false);
	redact_field(&edata->internalquery, false);
	MemoryContextSwitchTo(old);

	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

static bool
is_key_setting(const char *name)
{
	return name != NULL &&
		(pg_strcasecmp(name, "anthropic.api_key") == 0 ||
		 pg_strcasecmp(name, "anthropic.environment_key") == 0);
}

static void
ae_process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
				   ProcessUtilityContext context, ParamListInfo params,
				   QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;
	const char *name = NULL;

	if (IsA(parsetree, VariableSetStmt))
		name = ((VariableSetStmt *) parsetree)->name;
	else if (IsA(parsetree, AlterSystemStmt))
		name = ((AlterSystemStmt *) parsetree)->setstmt->name;
	else if (IsA(parsetree, AlterRoleSetStmt))
		name = ((AlterRoleSetStmt *) parsetree)->setstmt->name;
	else if (IsA(parsetree, AlterDatabaseSetStmt))
		name = ((AlterDatabaseSetStmt *) parsetree)->setstmt->name;

	/* pg_stat_activity keeps showing the text after the statement ends. */
	if (is_key_setting(name) && context == PROCESS_UTILITY_TOPLEVEL)
		pgstat_report_activity(STATE_RUNNING, AE_STATEMENT_MASK);

	if (prev_process_utility_hook)
		prev_process_utility_hook(pstmt, queryString, readOnlyTree, context,
								  params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
}

void
ae_redact_install(void)
{
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = ae_emit_log_hook;
	prev_process_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = ae_process_utility;
}
