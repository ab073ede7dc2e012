/*-------------------------------------------------------------------------
 *
 * redact.c
 *		Keeps the keys out of log lines, messages, pg_stat_activity and
 *		pg_stat_statements.
 *
 * A key can leak through text that PostgreSQL or the extension writes: a
 * reload logs "parameter ... changed to", log_statement prints the SET that
 * carries it, an error appends its statement or quotes a token of it, the
 * API may echo a key in its error, and pg_stat_activity and
 * pg_stat_statements keep the statement's text.  Masking is by value first:
 * every key in force, every key of the keys file, and every value that was
 * ever being assigned to a key setting in this process (the check hook
 * reports it) is replaced by "********" wherever it occurs.  The shape of
 * Anthropic keys ("sk-ant-...") is a second net.
 *
 * A value that has not reached the check hook yet, such as the key in a SET
 * being logged by log_statement before it runs, is found from the
 * statement: a statement is "sensitive" when its text, with quotes and
 * U&/E escapes decoded and case folded, says "key" together with
 * "anthropic" or "set_config".  In a sensitive statement every literal and
 * every bare value after "=" or TO is masked where the text is shown, and
 * those values are masked by value in every message raised while it runs.
 *
 * Hooks:
 * - emit_log_hook masks every field of every message before PostgreSQL
 *   writes it to the log or sends it to the client, and hides the
 *   STATEMENT of a sensitive statement;
 * - post_parse_analyze_hook and ProcessUtility_hook rewrite the backend's
 *   pg_stat_activity text and hand hooks further down the chain (that is,
 *   pg_stat_statements when it is listed before anthropic_env) a copy of
 *   the text with the same length, literals masked, so that statement
 *   locations stay valid; for DO and CALL the copy is also masked in place
 *   when the code assigns a key while it runs.
 *
 * What cannot be reached (the postmaster's environment dump at debug3, a
 * key built at run time and logged by log_statement before it runs) is
 * listed in the README's Security section.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "common/hashfn.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "nodes/parsenodes.h"
#include "parser/analyze.h"
#include "parser/parser.h"
#include "executor/executor.h"
#include "pgstat.h"
#include "tcop/tcopprot.h"
#include "tcop/utility.h"
#include "utils/backend_status.h"
#include "utils/elog.h"
#include "utils/formatting.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/varlena.h"

#include "anthropic_env.h"
#include "redact.h"

#define AE_MASK "********"

/*
 * Shorter values would mask innocent words for the rest of the session; no
 * real key is this short.  Values taken from the statement that is running
 * are masked only in its own messages, so a shorter bound does for them.
 */
#define AE_MIN_SECRET 10
#define AE_MIN_STATEMENT_VALUE 4

/* Values remembered for masking; the oldest assigned ones go first. */
#define AE_MAX_SECRETS 1024

static emit_log_hook_type prev_emit_log_hook = NULL;
static ProcessUtility_hook_type prev_process_utility_hook = NULL;
static post_parse_analyze_hook_type prev_post_parse_analyze_hook = NULL;
static ExecutorRun_hook_type prev_executor_run_hook = NULL;

/* Values to mask, in TopMemoryContext, oldest first. */
static List *secrets = NIL;

/* Bumped whenever a value is registered, so cached checks are redone. */
static uint64 secrets_gen = 0;

/*
 * Writable copies of statement texts handed down the hook chain while their
 * statement runs, masked in place when a key is assigned meanwhile.
 */
static List *live_texts = NIL;

/* ---------------------------------------------------------------------
 * Scanning SQL text
 * ---------------------------------------------------------------------
 */

/* 19 no longer lets standard_conforming_strings be off. */
#if PG_VERSION_NUM >= 190000
#define AE_STANDARD_STRINGS true
#else
#define AE_STANDARD_STRINGS standard_conforming_strings
#endif

typedef enum
{
	TOK_WORD,					/* keyword, identifier or number */
	TOK_QIDENT,					/* "..." or U&"..." */
	TOK_STRING,					/* '...', E'...', U&'...' and friends */
	TOK_DOLLAR,					/* $tag$...$tag$ */
	TOK_COMMENT,
	TOK_OTHER					/* an operator or punctuation character */
} TokKind;

typedef struct
{
	TokKind		kind;
	int			start;			/* the token in the text */
	int			end;
	int			cstart;			/* what is between the quotes */
	int			cend;
	char	   *decoded;		/* quoted kinds: the value, escapes undone */
	bool		sensitive;		/* part of a statement that could set a key */
} Tok;

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * Reads up to max digits in base (8 or 16) from s[i]; returns the index
 * after them and sets *cp to their value.
 */
static int
read_digits(const char *s, int i, int len, int max, int base, long *cp)
{
	int			j;

	*cp = 0;
	for (j = i; j < len && j < i + max; j++)
	{
		int			d = hexval(s[j]);

		if (d < 0 || d >= base)
			break;
		*cp = *cp * base + d;
	}
	return j;
}

/* Appends code point cp; only ASCII matters for what we look for. */
static void
append_cp(StringInfo out, long cp)
{
	if (cp > 0 && cp < 128)
		appendStringInfoChar(out, (char) cp);
	else
		appendStringInfoChar(out, '?');
}

/* Undoes the escapes of a U& literal or identifier body. */
static char *
decode_unicode(const char *s, int len, char esc)
{
	StringInfoData out;
	int			i = 0;

	initStringInfo(&out);
	while (i < len)
	{
		if (s[i] == esc && i + 1 < len && s[i + 1] == esc)
		{
			appendStringInfoChar(&out, esc);
			i += 2;
		}
		else if (s[i] == esc && i + 1 < len && s[i + 1] == '+')
		{
			long		cp = 0;
			int			j;

			j = read_digits(s, i + 2, len, 6, 16, &cp);
			append_cp(&out, cp);
			i = j;
		}
		else if (s[i] == esc)
		{
			long		cp = 0;
			int			j;

			j = read_digits(s, i + 1, len, 4, 16, &cp);
			append_cp(&out, cp);
			i = j;
		}
		else
			appendStringInfoChar(&out, s[i++]);
	}
	return out.data;
}

/* Undoes the escapes of an E'' literal body. */
static char *
decode_escape_string(const char *s, int len)
{
	StringInfoData out;
	int			i = 0;

	initStringInfo(&out);
	while (i < len)
	{
		if (s[i] == '\\' && i + 1 < len)
		{
			char		c = s[i + 1];
			long		cp = 0;
			int			j;

			if (c == 'x')
			{
				j = read_digits(s, i + 2, len, 2, 16, &cp);
				append_cp(&out, cp);
				i = j;
			}
			else if (c == 'u' || c == 'U')
			{
				int			n = c == 'u' ? 4 : 8;

				j = read_digits(s, i + 2, len, n, 16, &cp);
				append_cp(&out, cp);
				i = j;
			}
			else if (c >= '0' && c <= '7')
			{
				j = read_digits(s, i + 1, len, 3, 8, &cp);
				append_cp(&out, cp);
				i = j;
			}
			else
			{
				appendStringInfoChar(&out, c);
				i += 2;
			}
		}
		else if (s[i] == '\'' && i + 1 < len && s[i + 1] == '\'')
		{
			appendStringInfoChar(&out, '\'');
			i += 2;
		}
		else
			appendStringInfoChar(&out, s[i++]);
	}
	return out.data;
}

/* Undoes doubled quote characters. */
static char *
decode_doubled(const char *s, int len, char q)
{
	StringInfoData out;
	int			i = 0;

	initStringInfo(&out);
	while (i < len)
	{
		if (s[i] == q && i + 1 < len && s[i + 1] == q)
			i++;
		appendStringInfoChar(&out, s[i++]);
	}
	return out.data;
}

/*
 * Finds the end of a quoted body that starts at i, quote q; backslashes
 * escape when esc_backslash.  Returns the index of the closing quote, or
 * len when the text ends first (an unterminated literal).
 */
static int
quoted_end(const char *s, int len, int i, char q, bool esc_backslash)
{
	while (i < len)
	{
		if (esc_backslash && s[i] == '\\' && i + 1 < len)
			i += 2;
		else if (s[i] == q && i + 1 < len && s[i + 1] == q)
			i += 2;
		else if (s[i] == q)
			return i;
		else
			i++;
	}
	return len;
}

static bool
is_ident_start(unsigned char c)
{
	return isalpha(c) || c == '_' || c >= 0x80;
}

static bool
is_ident_char(unsigned char c)
{
	return isalnum(c) || c == '_' || c == '$' || c >= 0x80;
}

/* A UESCAPE 'c' clause after a U& token: returns its character or '\\'. */
static char
uescape_after(const char *s, int len, int *i)
{
	int			j = *i;

	while (j < len && isspace((unsigned char) s[j]))
		j++;
	if (j + 7 <= len && pg_strncasecmp(s + j, "uescape", 7) == 0)
	{
		j += 7;
		while (j < len && isspace((unsigned char) s[j]))
			j++;
		if (j + 2 < len && s[j] == '\'' && s[j + 2] == '\'')
		{
			*i = j + 3;
			return s[j + 1];
		}
	}
	return '\\';
}

/*
 * Splits SQL text into tokens.  Not PostgreSQL's lexer, but it agrees with
 * it on where literals, quoted identifiers, dollar quotes and comments
 * begin and end, which is all the masking needs.
 */
static List *
tokenize(const char *s, int len)
{
	List	   *toks = NIL;
	int			i = 0;

	while (i < len)
	{
		unsigned char c = (unsigned char) s[i];
		Tok		   *t;

		if (isspace(c))
		{
			i++;
			continue;
		}
		t = palloc0(sizeof(Tok));
		t->start = i;
		if (c == '-' && i + 1 < len && s[i + 1] == '-')
		{
			t->kind = TOK_COMMENT;
			while (i < len && s[i] != '\n')
				i++;
		}
		else if (c == '/' && i + 1 < len && s[i + 1] == '*')
		{
			int			depth = 1;

			t->kind = TOK_COMMENT;
			i += 2;
			while (i < len && depth > 0)
			{
				if (s[i] == '/' && i + 1 < len && s[i + 1] == '*')
				{
					depth++;
					i += 2;
				}
				else if (s[i] == '*' && i + 1 < len && s[i + 1] == '/')
				{
					depth--;
					i += 2;
				}
				else
					i++;
			}
		}
		else if ((c == 'u' || c == 'U') && i + 2 < len && s[i + 1] == '&' &&
				 (s[i + 2] == '\'' || s[i + 2] == '"'))
		{
			char		q = s[i + 2];
			int			close = quoted_end(s, len, i + 3, q, false);
			char		esc;
			char	   *body;

			t->kind = q == '\'' ? TOK_STRING : TOK_QIDENT;
			t->cstart = i + 3;
			t->cend = close;
			i = close < len ? close + 1 : len;
			esc = uescape_after(s, len, &i);
			body = decode_doubled(s + t->cstart, close - t->cstart, q);
			t->decoded = decode_unicode(body, strlen(body), esc);
		}
		else if (is_ident_start(c) && i + 1 < len && s[i + 1] == '\'' &&
				 strchr("eEbBxXnN", c) && (i == 0 || !is_ident_char((unsigned char) s[i - 1])))
		{
			bool		esc = (c == 'e' || c == 'E');
			int			close = quoted_end(s, len, i + 2, '\'', esc);

			t->kind = TOK_STRING;
			t->cstart = i + 2;
			t->cend = close;
			t->decoded = esc ? decode_escape_string(s + t->cstart, close - t->cstart)
				: decode_doubled(s + t->cstart, close - t->cstart, '\'');
			i = close < len ? close + 1 : len;
		}
		else if (is_ident_start(c))
		{
			t->kind = TOK_WORD;
			while (i < len && is_ident_char((unsigned char) s[i]))
				i++;
		}
		else if (isdigit(c))
		{
			t->kind = TOK_WORD;
			while (i < len && (isalnum((unsigned char) s[i]) || s[i] == '.' || s[i] == '_'))
				i++;
		}
		else if (c == '\'' || c == '"')
		{
			/* Without standard_conforming_strings, '' takes backslashes. */
			bool		esc = c == '\'' && !AE_STANDARD_STRINGS;
			int			close = quoted_end(s, len, i + 1, c, esc);

			t->kind = c == '\'' ? TOK_STRING : TOK_QIDENT;
			t->cstart = i + 1;
			t->cend = close;
			t->decoded = esc ? decode_escape_string(s + t->cstart, close - t->cstart)
				: decode_doubled(s + t->cstart, close - t->cstart, c);
			i = close < len ? close + 1 : len;
		}
		else if (c == '$' && i + 1 < len && (s[i + 1] == '$' || is_ident_start((unsigned char) s[i + 1])))
		{
			int			j = i + 1;
			int			taglen;
			int			k;

			while (j < len && s[j] != '$' && (isalnum((unsigned char) s[j]) || s[j] == '_' ||
											  (unsigned char) s[j] >= 0x80))
				j++;
			if (j >= len || s[j] != '$')
			{
				t->kind = TOK_OTHER;
				i++;
			}
			else
			{
				taglen = j - i + 1;
				t->kind = TOK_DOLLAR;
				t->cstart = j + 1;
				for (k = j + 1; k + taglen <= len; k++)
					if (strncmp(s + k, s + i, taglen) == 0)
						break;
				t->cend = k + taglen <= len ? k : len;
				i = k + taglen <= len ? k + taglen : len;
				t->decoded = pnstrdup(s + t->cstart, t->cend - t->cstart);
			}
		}
		else
		{
			t->kind = TOK_OTHER;
			i++;
		}
		t->end = i;
		toks = lappend(toks, t);
	}
	return toks;
}

static const char *
find_ci(const char *haystack, const char *needle)
{
	size_t		n = strlen(needle);

	for (; *haystack; haystack++)
		if (pg_strncasecmp(haystack, needle, n) == 0)
			return haystack;
	return NULL;
}

/*
 * Two string literals separated by whitespace with a newline are one
 * (SQL's continuation): 'anthropic.environment_k'<newline>'ey'.
 */
static bool
continues(const char *s, const Tok *prev, const Tok *t)
{
	bool		newline = false;
	int			i;

	if (prev == NULL || prev->kind != TOK_STRING || t->kind != TOK_STRING ||
		s[t->start] != '\'')
		return false;
	for (i = prev->end; i < t->start; i++)
	{
		if (s[i] == '\n')
			newline = true;
		else if (!isspace((unsigned char) s[i]))
			return false;
	}
	return newline;
}

static void fold_text(StringInfo out, const char *s, int len, int depth);

/* Appends the tokens [from, to) as the parser sees them: decoded. */
static void
fold_tokens(StringInfo out, List *toks, int from, int to, const char *s, int depth)
{
	Tok		   *prev = NULL;
	int			i;

	for (i = from; i < to; i++)
	{
		Tok		   *t = list_nth(toks, i);

		if (!continues(s, prev, t))
			appendStringInfoChar(out, ' ');
		if (t->kind == TOK_DOLLAR && depth < 4)
			fold_text(out, s + t->cstart, t->cend - t->cstart, depth + 1);
		else if (t->decoded)
			appendStringInfoString(out, t->decoded);
		else
			appendBinaryStringInfo(out, s + t->start, t->end - t->start);
		if (t->kind != TOK_COMMENT)
			prev = t;
	}
}

static void
fold_text(StringInfo out, const char *s, int len, int depth)
{
	List	   *toks = tokenize(s, len);

	fold_tokens(out, toks, 0, list_length(toks), s, depth);
}

/* Does folded text say "key" with "anthropic" or "set_config"? */
static bool
folded_is_sensitive(StringInfo f)
{
	char	   *low = asc_tolower(f->data, f->len);
	bool		result = strstr(low, "key") &&
		(strstr(low, "anthropic") || strstr(low, "set_config"));

	pfree(low);
	return result;
}

static bool
is_semicolon(const char *s, const Tok *t)
{
	return t->kind == TOK_OTHER && s[t->start] == ';';
}

/*
 * Marks the tokens of every statement of the text (split at top-level
 * semicolons) that could set a key: one that says "key" with "anthropic"
 * or "set_config", however quoted, escaped, continued or cased.  Judging
 * each statement alone keeps a script that says set_config in one place
 * and PRIMARY KEY in another from counting as sensitive.  Returns whether
 * any statement is.
 */
static bool
mark_sensitive(List *toks, const char *s)
{
	int			n = list_length(toks);
	int			from = 0;
	bool		any = false;
	int			i;

	for (i = 0; i <= n; i++)
	{
		StringInfoData f;
		bool		sens;
		int			j;

		if (i < n && !is_semicolon(s, list_nth(toks, i)))
			continue;
		initStringInfo(&f);
		fold_tokens(&f, toks, from, i, s, 0);
		sens = folded_is_sensitive(&f);
		pfree(f.data);
		for (j = from; j < i; j++)
			((Tok *) list_nth(toks, j))->sensitive = sens;
		any |= sens;
		from = i + 1;
	}
	return any;
}

/* Does a literal close and another continue it on a later line? */
static bool
has_continuation(const char *s)
{
	const char *q;

	for (q = strchr(s, '\''); q; q = strchr(q + 1, '\''))
	{
		const char *p = q + 1;
		bool		newline = false;

		while (isspace((unsigned char) *p))
			newline |= (*p++ == '\n');
		if (newline && *p == '\'')
			return true;
	}
	return false;
}

/* Cheap first look: every way to spell a key setting passes it. */
static bool
may_be_sensitive(const char *s)
{
	return s != NULL && (find_ci(s, "key") || find_ci(s, "u&") ||
						 strchr(s, '\\') || has_continuation(s));
}

static bool
is_sensitive(const char *s)
{
	if (!may_be_sensitive(s))
		return false;
	return mark_sensitive(tokenize(s, strlen(s)), s);
}

/* Does a dollar-quoted body look like code (DO, CREATE FUNCTION)? */
static bool
looks_like_code(const char *s, int len)
{
	int			i;

	for (i = 0; i < len; i++)
		if (isspace((unsigned char) s[i]) || s[i] == ';' || s[i] == '(')
			return true;
	return false;
}

/* A literal that names an existing anthropic.* setting stays visible. */
static bool
is_setting_name(const char *v)
{
	return pg_strncasecmp(v, "anthropic.", strlen("anthropic.")) == 0 &&
		strlen(v) < 64 && strpbrk(v, " \t\n'\"") == NULL &&
		GetConfigOption(v, true, false) != NULL;
}

/* Is the token after lc a "(" or "." (so lc is a function or schema)? */
static bool
followed_by_call(ListCell *lc, List *toks, const char *s)
{
	ListCell   *next = lnext(toks, lc);
	Tok		   *t;

	if (next == NULL)
		return false;
	t = lfirst(next);
	return t->kind == TOK_OTHER && (s[t->start] == '(' || s[t->start] == '.');
}

/* Is t "=" or TO, after which SET takes a value? */
static bool
introduces_value(const char *s, const Tok *t)
{
	return t != NULL &&
		((t->kind == TOK_OTHER && s[t->start] == '=') ||
		 (t->kind == TOK_WORD && t->end - t->start == 2 &&
		  pg_strncasecmp(s + t->start, "to", 2) == 0));
}

/*
 * Masks, in out (a copy of s), every literal and every bare or
 * double-quoted value after "=" or TO of the statements that could set a
 * key, descending into code in dollar quotes (all of which is then
 * masked); collects the values into *values.  same_length fills with '*'
 * instead of AE_MASK, so that the text keeps its length.
 */
static void
mask_literals_into(StringInfo out, const char *s, int len, bool same_length,
				   List **values, int depth)
{
	List	   *toks = tokenize(s, len);
	ListCell   *lc;
	int			pos = 0;
	Tok		   *prev = NULL;

	if (depth == 0)
		mark_sensitive(toks, s);
	foreach(lc, toks)
	{
		Tok		   *t = lfirst(lc);
		int			ms = -1;
		int			me = -1;

		if (depth == 0 && !t->sensitive)
		{
			prev = t;
			continue;
		}
		if (t->kind == TOK_STRING && !is_setting_name(t->decoded))
		{
			ms = t->cstart;
			me = t->cend;
		}
		else if (t->kind == TOK_DOLLAR)
		{
			if (depth < 4 && looks_like_code(s + t->cstart, t->cend - t->cstart))
			{
				appendBinaryStringInfo(out, s + pos, t->cstart - pos);
				mask_literals_into(out, s + t->cstart, t->cend - t->cstart,
								   same_length, values, depth + 1);
				pos = t->cend;
			}
			else
			{
				ms = t->cstart;
				me = t->cend;
			}
		}
		else if ((t->kind == TOK_WORD || t->kind == TOK_QIDENT) &&
				 introduces_value(s, prev) && !followed_by_call(lc, toks, s))
		{
			ms = t->kind == TOK_QIDENT ? t->cstart : t->start;
			me = t->kind == TOK_QIDENT ? t->cend : t->end;
		}
		else if (t->kind == TOK_OTHER && (s[t->start] == '-' || s[t->start] == '+') &&
				 introduces_value(s, prev))
			continue;			/* a signed number: the value follows */

		if (ms >= 0 && me > ms)
		{
			if (values)
			{
				*values = lappend(*values, pnstrdup(s + ms, me - ms));
				if (t->decoded)
					*values = lappend(*values, t->decoded);
			}
			appendBinaryStringInfo(out, s + pos, ms - pos);
			if (same_length)
			{
				int			k;

				for (k = ms; k < me; k++)
					appendStringInfoChar(out, '*');
			}
			else
				appendStringInfoString(out, AE_MASK);
			pos = me;
		}
		if (t->kind != TOK_COMMENT)
			prev = t;
	}
	appendBinaryStringInfo(out, s + pos, len - pos);
}

/* ---------------------------------------------------------------------
 * Masking by value
 * ---------------------------------------------------------------------
 */

/* Replaces every occurrence of value in *s (a palloc'd string). */
static bool
mask_value(char **s, const char *value, bool same_length, size_t min_len)
{
	size_t		len = strlen(value);
	const char *p;
	StringInfoData out;

	if (len < min_len || strstr(*s, value) == NULL)
		return false;
	initStringInfo(&out);
	for (p = *s; *p;)
	{
		const char *hit = strstr(p, value);

		if (hit == NULL)
		{
			appendStringInfoString(&out, p);
			break;
		}
		appendBinaryStringInfo(&out, p, hit - p);
		if (same_length)
		{
			size_t		k;

			for (k = 0; k < len; k++)
				appendStringInfoChar(&out, '*');
		}
		else
			appendStringInfoString(&out, AE_MASK);
		p = hit + len;
	}
	*s = out.data;
	return true;
}

/* Masks every "sk-ant-..." token: the shape of Anthropic keys. */
static bool
mask_key_shapes(char **s, bool same_length)
{
	const char *p;
	StringInfoData out;

	if (strstr(*s, "sk-ant-") == NULL)
		return false;
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
		appendStringInfoString(&out, "sk-ant-");
		if (same_length)
		{
			const char *k;

			for (k = hit + strlen("sk-ant-"); k < end; k++)
				appendStringInfoChar(&out, '*');
		}
		else
			appendStringInfoString(&out, AE_MASK);
		p = end;
	}
	*s = out.data;
	return true;
}

/* Masks every key known to this process. */
static bool
mask_known(char **s, bool same_length)
{
	const char *api_key = ae_effective_api_key();
	bool		changed = false;
	ListCell   *lc;

	if (api_key)
		changed |= mask_value(s, api_key, same_length, AE_MIN_SECRET);
	if (ae_environment_key && *ae_environment_key)
		changed |= mask_value(s, ae_environment_key, same_length, AE_MIN_SECRET);
	foreach(lc, secrets)
	{
		const char *v = (const char *) lfirst(lc);

		changed |= mask_value(s, v, same_length, AE_MIN_SECRET);
		/* A value with a quote also shows in its SQL spelling. */
		if (strchr(v, '\''))
		{
			StringInfoData sql;

			initStringInfo(&sql);
			for (; *v; v++)
			{
				if (*v == '\'')
					appendStringInfoChar(&sql, '\'');
				appendStringInfoChar(&sql, *v);
			}
			changed |= mask_value(s, sql.data, same_length, AE_MIN_SECRET);
		}
	}
	changed |= mask_key_shapes(s, same_length);
	return changed;
}

static bool
holds_known(const char *s)
{
	char	   *copy = (char *) s;

	return s != NULL && mask_known(&copy, true);
}

void
ae_redact_register_secret(const char *value)
{
	ListCell   *lc;
	MemoryContext old;

	if (value == NULL || strlen(value) < AE_MIN_SECRET)
		return;
	foreach(lc, secrets)
		if (strcmp((const char *) lfirst(lc), value) == 0)
			return;
	old = MemoryContextSwitchTo(TopMemoryContext);
	if (list_length(secrets) >= AE_MAX_SECRETS)
	{
		pfree(linitial(secrets));
		secrets = list_delete_first(secrets);
	}
	secrets = lappend(secrets, pstrdup(value));
	secrets_gen++;
	MemoryContextSwitchTo(old);
}

/*
 * The text as it may be shown: a sensitive statement with its literals
 * masked, then every known key masked.  Returns s itself when nothing
 * needed masking.
 */
static char *
mask_statement_text(const char *s, bool same_length)
{
	char	   *out = (char *) s;

	if (s == NULL)
		return NULL;
	if (is_sensitive(s))
	{
		StringInfoData buf;

		initStringInfo(&buf);
		mask_literals_into(&buf, s, strlen(s), same_length, NULL, 0);
		out = buf.data;
	}
	mask_known(&out, same_length);
	return out;
}

/*
 * Masks, for hooks further down, the one statement at [loc, loc + len) of a
 * possibly multi-statement text (len 0: to the end), keeping the length so
 * that every statement location stays valid.  Returns the masked copy of
 * the whole text, or the text itself when nothing needed masking.  Only
 * the statement is scanned: a dump of thousands of statements in one string
 * costs linear time.
 */
static const char *
mask_one_statement(const char *text, int loc, int len)
{
	char	   *stmt;
	char	   *masked;
	char	   *copy;

	if (text == NULL)
		return NULL;
	if (loc < 0)
		loc = 0;
	if (len <= 0)
		len = strlen(text + loc);
	stmt = pnstrdup(text + loc, len);
	masked = mask_statement_text(stmt, true);
	if (masked == stmt || strlen(masked) != (size_t) len)
		return text;
	copy = pstrdup(text);
	memcpy(copy + loc, masked, len);
	return copy;
}

char *
ae_redact_text(const char *text)
{
	char	   *out;

	if (text == NULL)
		return NULL;
	out = pstrdup(text);
	mask_known(&out, false);
	return out;
}

/* ---------------------------------------------------------------------
 * pg_stat_activity
 * ---------------------------------------------------------------------
 */

/* Rewrites this backend's activity text when it would show a key. */
static void
redact_activity(void)
{
	volatile PgBackendStatus *be = MyBEEntry;
	char	   *cur;
	char	   *masked;
	int			len;

	if (be == NULL || !pgstat_track_activities || be->st_activity_raw == NULL)
		return;
	cur = pnstrdup((const char *) be->st_activity_raw, pgstat_track_activity_query_size);
	masked = mask_statement_text(cur, false);
	if (masked == cur)
		return;
	len = Min(strlen(masked), (size_t) pgstat_track_activity_query_size - 1);
	len = pg_mbcliplen(masked, len, len);
	PGSTAT_BEGIN_WRITE_ACTIVITY(be);
	memcpy((char *) be->st_activity_raw, masked, len);
	be->st_activity_raw[len] = '\0';
	PGSTAT_END_WRITE_ACTIVITY(be);
}

/* ---------------------------------------------------------------------
 * The key settings' check hook reports each value being assigned
 * ---------------------------------------------------------------------
 */

static void
note_key_value(const char *value)
{
	ListCell   *lc;

	if (value == NULL || strlen(value) < AE_MIN_SECRET)
		return;
	ae_redact_register_secret(value);
	foreach(lc, live_texts)
	{
		char	   *text = lfirst(lc);
		char	   *hit;

		while ((hit = strstr(text, value)) != NULL)
			memset(hit, '*', strlen(value));
	}
	if (IsUnderPostmaster)
		redact_activity();
}

/* ---------------------------------------------------------------------
 * emit_log_hook
 * ---------------------------------------------------------------------
 */

/* Masks every '...' span of a DETAIL or CONTEXT that is sensitive itself. */
static void
mask_quoted_spans(char **s)
{
	StringInfoData out;
	const char *p = *s;
	const char *q;

	initStringInfo(&out);
	while ((q = strchr(p, '\'')) != NULL)
	{
		int			close = quoted_end(q, strlen(q), 1, '\'', false);

		appendBinaryStringInfo(&out, p, q - p + 1);
		appendStringInfoString(&out, AE_MASK);
		p = q + close;
		if (*p == '\0')
			break;
		appendStringInfoChar(&out, '\'');
		p++;
	}
	appendStringInfoString(&out, p);
	*s = out.data;
}

/*
 * Masks a value after the name of a key setting, as in parameter
 * "anthropic.api_key" changed to "...": the second net for texts that carry
 * a value not yet registered.
 */
static void
mask_after_names(char **s)
{
	static const char *const names[] = {"anthropic.api_key", "anthropic.environment_key"};
	size_t		i;

	for (i = 0; i < lengthof(names); i++)
	{
		const char *from = *s;
		const char *hit;

		while ((hit = find_ci(from, names[i])) != NULL)
		{
			const char *p = hit + strlen(names[i]);
			const char *open;
			const char *close;
			StringInfoData out;
			int			resume;

			/* anthropic.environment_keys_file is another setting. */
			if (is_ident_char((unsigned char) *p))
			{
				from = p;
				continue;
			}
			/* Step over the quote that closes the name itself. */
			if (*p == '"' || *p == '\'')
				p++;
			for (open = p; *open && !strchr("'\"", *open); open++)
				;
			if (*open == '\0')
				break;
			close = strchr(open + 1, *open);
			if (close == NULL)
				close = open + strlen(open);
			initStringInfo(&out);
			appendBinaryStringInfo(&out, *s, open + 1 - *s);
			appendStringInfoString(&out, AE_MASK);
			resume = out.len;
			appendStringInfoString(&out, close);
			*s = out.data;
			from = out.data + resume;
		}
	}
}

/*
 * PostgreSQL's own messages that quote a setting's value after its name;
 * the value is registered already when it went through the check hook, so
 * this is the second net.
 */
static bool
quotes_setting_value(const ErrorData *edata)
{
	return edata->message_id &&
		strstr(edata->message_id, "parameter \"%s\"") != NULL;
}

static void
redact_field(char **field, List *values, bool quoting_context)
{
	ListCell   *lc;

	if (*field == NULL)
		return;
	foreach(lc, values)
		mask_value(field, (const char *) lfirst(lc), false, AE_MIN_STATEMENT_VALUE);
	mask_known(field, false);
	if (quoting_context && is_sensitive(*field))
		mask_quoted_spans(field);
}

/*
 * What the log hook needs to know about the statement running, computed
 * once per statement rather than once per message (at debug5 a statement
 * raises many): whether it could set a key, its text with those literals
 * masked, their values, and whether it holds a known key.  Kept with a copy
 * of the text it describes, which is how a later message knows it is still
 * the same statement.
 */
typedef struct StatementFacts
{
	char	   *text;
	size_t		len;
	bool		sensitive;
	char	   *masked;
	List	   *values;
	uint64		secrets_gen;
	bool		holds_known;
} StatementFacts;

static MemoryContext facts_cxt = NULL;
static StatementFacts facts;

/* The values, without repeats: 40,000 statements may carry one value. */
static List *
distinct_values(List *values)
{
	HASHCTL		ctl;
	HTAB	   *seen;
	List	   *out = NIL;
	ListCell   *lc;

	if (list_length(values) < 2)
		return values;
	ctl.keysize = sizeof(uint64);
	ctl.entrysize = sizeof(uint64);
	ctl.hcxt = CurrentMemoryContext;
	seen = hash_create("anthropic_env statement values", list_length(values), &ctl,
					   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	foreach(lc, values)
	{
		const char *v = lfirst(lc);
		uint64		h = hash_bytes_extended((const unsigned char *) v, strlen(v), 0);
		bool		found;

		hash_search(seen, &h, HASH_ENTER, &found);
		if (!found)
			out = lappend(out, (void *) v);
	}
	hash_destroy(seen);
	return out;
}

static const StatementFacts *
statement_facts(const char *stmt)
{
	size_t		len = strlen(stmt);
	MemoryContext old;

	if (facts.text == NULL || facts.len != len || memcmp(facts.text, stmt, len) != 0)
	{
		if (facts_cxt == NULL)
			facts_cxt = AllocSetContextCreate(TopMemoryContext, "anthropic_env statement facts",
											  ALLOCSET_DEFAULT_SIZES);
		MemoryContextReset(facts_cxt);
		memset(&facts, 0, sizeof(facts));
		old = MemoryContextSwitchTo(facts_cxt);
		facts.text = pstrdup(stmt);
		facts.len = len;
		facts.sensitive = is_sensitive(stmt);
		if (facts.sensitive)
		{
			StringInfoData masked;
			List	   *values = NIL;

			initStringInfo(&masked);
			mask_literals_into(&masked, stmt, len, false, &values, 0);
			facts.masked = masked.data;
			facts.values = distinct_values(values);
		}
		facts.secrets_gen = secrets_gen - 1;
		MemoryContextSwitchTo(old);
	}
	if (facts.secrets_gen != secrets_gen)
	{
		facts.holds_known = holds_known(stmt);
		facts.secrets_gen = secrets_gen;
	}
	return &facts;
}

static void
ae_emit_log_hook(ErrorData *edata)
{
	MemoryContext old = MemoryContextSwitchTo(ErrorContext);
	const char *stmt = debug_query_string;
	List	   *values = NIL;

	if (stmt != NULL)
	{
		const StatementFacts *f = statement_facts(stmt);
		const char *at;

		if (f->sensitive)
		{
			values = f->values;
			edata->hide_stmt = true;

			/*
			 * A syntax error quotes the text where it failed, which need not
			 * be a literal (a key typed after a literal closed too early).
			 */
			if (edata->cursorpos > 0 && edata->sqlerrcode == ERRCODE_SYNTAX_ERROR)
			{
				int			at_byte = pg_mbcharcliplen(stmt, f->len, edata->cursorpos - 1);
				int			end = at_byte;

				while (end < (int) f->len && !isspace((unsigned char) stmt[end]) &&
					   !strchr("'\";,()", stmt[end]))
					end++;
				if (end - at_byte >= AE_MIN_STATEMENT_VALUE)
					values = lappend(list_copy(values), pnstrdup(stmt + at_byte, end - at_byte));
			}

			/*
			 * A message that carries the statement (log_statement,
			 * duration, parse, bind, execute) shows it with the literals
			 * masked; the words around it stay as translated.
			 */
			if (edata->message && (at = strstr(edata->message, stmt)) != NULL)
				edata->message = psprintf("%.*s%s%s", (int) (at - edata->message),
										  edata->message, f->masked, at + f->len);
			if (edata->elevel >= ERROR && IsUnderPostmaster)
				redact_activity();
		}
		else if (f->holds_known)
			edata->hide_stmt = true;
	}

	redact_field(&edata->message, values, false);
	if (edata->message && quotes_setting_value(edata))
		mask_after_names(&edata->message);
	/* DETAIL lists bind parameters: $1 = 'anthropic.api_key', $2 = '...'. */
	redact_field(&edata->detail, values, true);
	redact_field(&edata->detail_log, values, true);
	redact_field(&edata->hint, values, false);
	/* CONTEXT quotes nested statements: SQL statement "SELECT ...". */
	redact_field(&edata->context, values, true);
	if (edata->internalquery && is_sensitive(edata->internalquery))
		edata->internalquery = mask_statement_text(edata->internalquery, false);
	redact_field(&edata->internalquery, values, false);
	MemoryContextSwitchTo(old);

	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

/* ---------------------------------------------------------------------
 * Statement texts: pg_stat_activity and hooks further down the chain
 * ---------------------------------------------------------------------
 */

/* 19 passes the jumble state as const. */
#if PG_VERSION_NUM >= 190000
typedef const JumbleState AeJumbleState;
#else
typedef JumbleState AeJumbleState;
#endif

static void
ae_post_parse_analyze(ParseState *pstate, Query *query, AeJumbleState *jstate)
{
	const char *text = pstate->p_sourcetext;

	/*
	 * The activity shows the whole string, later statements included: look
	 * at it once, when its first statement is analysed.
	 */
	if (text != NULL && text == debug_query_string && query->stmt_location <= 0)
		redact_activity();
	/* Only a hook further down (pg_stat_statements) needs a masked copy. */
	if (prev_post_parse_analyze_hook)
		pstate->p_sourcetext = mask_one_statement(text, query->stmt_location, query->stmt_len);
	if (prev_post_parse_analyze_hook)
		prev_post_parse_analyze_hook(pstate, query, jstate);
}

/*
 * Is text the top-level statement?  Execute reports a copy of the portal's
 * text, so the pointers differ there; a nested statement's text differs
 * from the top-level one within its first characters.
 */
static bool
is_top_level_text(const char *text)
{
	return text != NULL && debug_query_string != NULL &&
		(text == debug_query_string || strcmp(text, debug_query_string) == 0);
}

/*
 * Execute reports the raw text again, after Bind has started the executor:
 * look at it once more when the executor runs.
 */
#if PG_VERSION_NUM >= 180000
static void
ae_executor_run(QueryDesc *queryDesc, ScanDirection direction, uint64 count)
{
	if (queryDesc->plannedstmt->stmt_location <= 0 && is_top_level_text(queryDesc->sourceText))
		redact_activity();
	if (prev_executor_run_hook)
		prev_executor_run_hook(queryDesc, direction, count);
	else
		standard_ExecutorRun(queryDesc, direction, count);
}
#else
static void
ae_executor_run(QueryDesc *queryDesc, ScanDirection direction, uint64 count,
				bool execute_once)
{
	if (queryDesc->plannedstmt->stmt_location <= 0 && is_top_level_text(queryDesc->sourceText))
		redact_activity();
	if (prev_executor_run_hook)
		prev_executor_run_hook(queryDesc, direction, count, execute_once);
	else
		standard_ExecutorRun(queryDesc, direction, count, execute_once);
}
#endif

static void
ae_process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
				   ProcessUtilityContext context, ParamListInfo params,
				   QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;
	const char *volatile text = queryString;
	char	   *volatile live_copy = NULL;

	/* The extended protocol reported the raw text again at Execute. */
	if (context == PROCESS_UTILITY_TOPLEVEL && pstmt->stmt_location <= 0 &&
		is_top_level_text(queryString))
		redact_activity();

	/* Only a hook further down (pg_stat_statements) needs a masked copy. */
	if (prev_process_utility_hook)
		text = mask_one_statement(queryString, pstmt->stmt_location, pstmt->stmt_len);

	/*
	 * Code run by DO or CALL may assign a key that its text does not show;
	 * hooks below see a copy that note_key_value() masks in place.
	 */
	if (text == queryString && queryString && prev_process_utility_hook &&
		(IsA(parsetree, DoStmt) || IsA(parsetree, CallStmt)))
	{
		live_copy = pstrdup(queryString);
		live_texts = lcons(live_copy, live_texts);
		text = live_copy;
	}

	PG_TRY();
	{
		if (prev_process_utility_hook)
			prev_process_utility_hook(pstmt, text, readOnlyTree, context,
									  params, queryEnv, dest, qc);
		else
			standard_ProcessUtility(pstmt, text, readOnlyTree, context,
									params, queryEnv, dest, qc);
	}
	PG_FINALLY();
	{
		if (live_copy)
			live_texts = list_delete_first(live_texts);
	}
	PG_END_TRY();
}

/* ---------------------------------------------------------------------
 * Installation
 * ---------------------------------------------------------------------
 */

/* The file name of a shared_preload_libraries entry, without ".so". */
static char *
library_base(const char *entry)
{
	const char *slash = strrchr(entry, '/');
	char	   *base = pstrdup(slash ? slash + 1 : entry);
	size_t		n = strlen(base);

	if (n > 3 && strcmp(base + n - 3, ".so") == 0)
		base[n - 3] = '\0';
	return base;
}

/*
 * pg_stat_statements stores the text its hooks receive.  Listed after
 * anthropic_env, its hooks run first and receive the raw text, which no
 * hook of ours can change: say so once, at startup.
 */
static void
check_preload_order(void)
{
	char	   *copy = pstrdup(shared_preload_libraries_string ? shared_preload_libraries_string : "");
	List	   *libs = NIL;
	ListCell   *lc;
	int			ours = -1;
	int			pgss = -1;

	if (!SplitDirectoriesString(copy, ',', &libs))
		return;
	foreach(lc, libs)
	{
		char	   *base = library_base((const char *) lfirst(lc));

		if (strcmp(base, "anthropic_env") == 0 && ours < 0)
			ours = foreach_current_index(lc);
		else if (strcmp(base, "pg_stat_statements") == 0 && pgss < 0)
			pgss = foreach_current_index(lc);
	}
	if (ours >= 0 && pgss > ours)
		ereport(WARNING,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("pg_stat_statements is listed after anthropic_env in shared_preload_libraries, so it can store keys in statement texts"),
				 errhint("List pg_stat_statements first: shared_preload_libraries = 'pg_stat_statements,anthropic_env'.")));
}

void
ae_redact_install(void)
{
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = ae_emit_log_hook;
	prev_process_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = ae_process_utility;
	prev_post_parse_analyze_hook = post_parse_analyze_hook;
	post_parse_analyze_hook = ae_post_parse_analyze;
	prev_executor_run_hook = ExecutorRun_hook;
	ExecutorRun_hook = ae_executor_run;
	ae_key_assign_hook = note_key_value;
	if (process_shared_preload_libraries_in_progress)
		check_preload_order();
}
