/*-------------------------------------------------------------------------
 *
 * envkeys.c
 *		Loads anthropic.environment_keys_file: one "environment_id key"
 *		per line, "#" starts a comment.
 *
 * Each self-hosted environment has a key of its own, so one
 * anthropic.environment_key cannot serve several.  The file is a password
 * file: it is refused unless the server's user owns it and nobody else
 * may read or write it (mode 0600 or stricter), the way libpq treats
 * ~/.pgpass.  Every key read from it is handed to the redaction registry,
 * so it is masked by value like the keys set as settings.
 *
 * Each process keeps its own copy, in TopMemoryContext, and rereads the
 * file whenever its path, identity, size or modification time changed;
 * a stat() per work call costs microseconds and makes "edit the file,
 * then reload" need no cooperation from any other process.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/stat.h>
#include <unistd.h>

#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/elog.h"
#include "utils/memutils.h"

#include "anthropic_env.h"
#include "envkeys.h"
#include "redact.h"

typedef struct AeEnvKey
{
	char	   *environment_id;
	char	   *key;
} AeEnvKey;

typedef struct AeKeysFileSig
{
	char		path[MAXPGPATH];
	bool		exists;
	dev_t		dev;
	ino_t		ino;
	off_t		size;
	struct timespec mtime;
	uid_t		uid;
	mode_t		mode;
} AeKeysFileSig;

static emit_log_hook_type prev_emit_log_hook = NULL;

static AeEnvKey *keys = NULL;
static int	nkeys = 0;
static bool loaded = false;
static AeKeysFileSig loaded_sig;

/* The last refusal warned about, so that each change warns once. */
static AeKeysFileSig warned_sig;
static bool have_warned = false;

static void
take_signature(const char *path, AeKeysFileSig *sig)
{
	struct stat st;

	memset(sig, 0, sizeof(*sig));
	strlcpy(sig->path, path, sizeof(sig->path));
	if (stat(path, &st) != 0)
		return;
	sig->exists = true;
	sig->dev = st.st_dev;
	sig->ino = st.st_ino;
	sig->size = st.st_size;
#ifdef __APPLE__
	sig->mtime = st.st_mtimespec;
#else
	sig->mtime = st.st_mtim;
#endif
	sig->uid = st.st_uid;
	sig->mode = st.st_mode;
}

static bool
same_signature(const AeKeysFileSig *a, const AeKeysFileSig *b)
{
	return strcmp(a->path, b->path) == 0 && a->exists == b->exists &&
		a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
		a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec &&
		a->uid == b->uid && a->mode == b->mode;
}

static void
forget_keys(void)
{
	int			i;

	for (i = 0; i < nkeys; i++)
	{
		explicit_bzero(keys[i].key, strlen(keys[i].key));
		pfree(keys[i].key);
		pfree(keys[i].environment_id);
	}
	if (keys)
		pfree(keys);
	keys = NULL;
	nkeys = 0;
}

/*
 * Why the file cannot be used, or NULL.  A missing file is refused too:
 * a typo in the path must not silently send another key.
 */
static const char *
refusal(const AeKeysFileSig *sig)
{
	if (!sig->exists)
		return "The file does not exist or cannot be read.";
	if (!S_ISREG(sig->mode))
		return "It is not a regular file.";
	if (sig->uid != geteuid())
		return "It is not owned by the user the server runs as.";
	if (sig->mode & (S_IRWXG | S_IRWXO))
		return "Its permissions allow access by group or others; they must be u=rw (0600) or less.";
	return NULL;
}

static bool
is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r';
}

/*
 * Parses the file into a new key array.  Problems are collected into
 * *problems (line numbers only, never a value) rather than raised.
 */
static void
parse_file(FILE *f, StringInfo problems)
{
	char		line[8192];
	int			lineno = 0;
	int			cap = 16;

	keys = MemoryContextAlloc(TopMemoryContext, sizeof(AeEnvKey) * cap);
	while (fgets(line, sizeof(line), f) != NULL)
	{
		char	   *p = line;
		char	   *id;
		char	   *key;
		size_t		len = strlen(line);
		int			i;

		lineno++;
		if (len > 0 && line[len - 1] == '\n')
			line[--len] = '\0';
		else if (!feof(f))
		{
			int			c;

			while ((c = fgetc(f)) != EOF && c != '\n')
				;
			appendStringInfo(problems, " Line %d is too long.", lineno);
			continue;
		}
		while (is_space(*p))
			p++;
		if (*p == '\0' || *p == '#')
			continue;
		id = p;
		while (*p && !is_space(*p))
			p++;
		if (*p == '\0')
		{
			appendStringInfo(problems, " Line %d has no key.", lineno);
			continue;
		}
		*p++ = '\0';
		while (is_space(*p))
			p++;
		key = p;
		while (*p && !is_space(*p))
			p++;
		if (*p)
		{
			*p++ = '\0';
			while (is_space(*p))
				p++;
		}
		if (*key == '\0' || (*p != '\0' && *p != '#'))
		{
			appendStringInfo(problems, " Line %d is not \"environment_id key\".", lineno);
			explicit_bzero(line, sizeof(line));
			continue;
		}
		for (i = 0; i < nkeys; i++)
			if (strcmp(keys[i].environment_id, id) == 0)
				break;
		if (i < nkeys)
		{
			appendStringInfo(problems, " Line %d repeats environment %s; the later line wins.", lineno, id);
			explicit_bzero(keys[i].key, strlen(keys[i].key));
			pfree(keys[i].key);
		}
		else
		{
			if (nkeys == cap)
			{
				cap *= 2;
				keys = repalloc(keys, sizeof(AeEnvKey) * cap);
			}
			keys[i].environment_id = MemoryContextStrdup(TopMemoryContext, id);
			nkeys++;
		}
		keys[i].key = MemoryContextStrdup(TopMemoryContext, key);
		ae_redact_register_secret(key);
		explicit_bzero(line, sizeof(line));
	}
}

static void
refresh(bool quiet)
{
	const char *path = ae_environment_keys_file ? ae_environment_keys_file : "";
	AeKeysFileSig sig;
	const char *why;
	StringInfoData problems;
	FILE	   *f;

	if (*path == '\0')
	{
		if (nkeys > 0 || !loaded)
			forget_keys();
		memset(&loaded_sig, 0, sizeof(loaded_sig));
		loaded = true;
		return;
	}
	take_signature(path, &sig);
	if (loaded && same_signature(&sig, &loaded_sig))
		return;

	forget_keys();
	loaded_sig = sig;
	loaded = true;

	why = refusal(&sig);
	f = why ? NULL : AllocateFile(path, "r");
	if (why == NULL && f == NULL)
		why = "The file cannot be opened.";
	if (why)
	{
		if (!quiet && !(have_warned && same_signature(&sig, &warned_sig)))
		{
			ereport(WARNING,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("the file named by anthropic.environment_keys_file is not used"),
					 errdetail("File \"%s\": %s", path, why),
					 errhint("The file must be owned by the server's user with mode 0600; until then anthropic.environment_key or the API key is sent.")));
			warned_sig = sig;
			have_warned = true;
		}
		else if (quiet)
			loaded = false;		/* warn on the next lookup */
		return;
	}

	initStringInfo(&problems);
	parse_file(f, &problems);
	FreeFile(f);
	if (problems.len > 0)
	{
		if (quiet)
		{
			/* Parsed and registered; the next lookup warns. */
			loaded = false;
			forget_keys();
		}
		else
			ereport(WARNING,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("some lines of the file named by anthropic.environment_keys_file are ignored"),
					 errdetail("File \"%s\":%s", path, problems.data)));
	}
	pfree(problems.data);
}

const char *
ae_envkeys_lookup(const char *environment_id)
{
	int			i;

	refresh(false);
	for (i = 0; i < nkeys; i++)
		if (strcmp(keys[i].environment_id, environment_id) == 0)
			return keys[i].key;
	return NULL;
}

/*
 * Runs before redact.c's hook (hooks run newest first), so that a key
 * added to the file since this process last looked is masked too, in
 * processes that never make a work call.
 */
static void
envkeys_emit_log_hook(ErrorData *edata)
{
	static bool refreshing = false;

	if (!refreshing && IsUnderPostmaster)
	{
		refreshing = true;
		PG_TRY();
		{
			refresh(true);
		}
		PG_FINALLY();
		{
			refreshing = false;
		}
		PG_END_TRY();
	}
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

void
ae_envkeys_install(void)
{
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = envkeys_emit_log_hook;
}
