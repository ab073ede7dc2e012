/*-------------------------------------------------------------------------
 *
 * keycheck.c
 *		Warns at startup about keys stored in pg_db_role_setting.
 *
 * With the library preloaded, the key settings' check hook refuses ALTER
 * ROLE/DATABASE ... SET of a key.  A key stored before that (the library
 * not yet preloaded, or an older version) is still in pg_db_role_setting,
 * which every role can read.  A one-shot background worker looks once per
 * server start (the catalog is shared, so any database will do: it uses
 * anthropic.sync_database, else postgres) and
 * logs a WARNING per such entry naming the role and database and the RESET
 * that removes it, never the value.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_db_role_setting.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "tcop/tcopprot.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "anthropic_env.h"
#include "keycheck.h"

PGDLLEXPORT void ae_keycheck_main(Datum arg);

static const char *const key_settings[] = {"anthropic.api_key", "anthropic.environment_key"};

void
ae_keycheck_register(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	/* A standby's catalog is the primary's: warn there too. */
	worker.bgw_start_time = BgWorkerStart_ConsistentState;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "anthropic_env");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "ae_keycheck_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "anthropic_env key check");
	snprintf(worker.bgw_type, BGW_MAXLEN, "anthropic_env key check");
	RegisterBackgroundWorker(&worker);
}

/*
 * The name of the key setting a "name=value" entry stores, as spelled
 * there, or NULL.
 */
static char *
stored_key_setting(const char *entry)
{
	const char *eq = strchr(entry, '=');
	size_t		i;

	if (eq == NULL)
		return NULL;
	for (i = 0; i < lengthof(key_settings); i++)
		if (strlen(key_settings[i]) == (size_t) (eq - entry) &&
			pg_strncasecmp(entry, key_settings[i], eq - entry) == 0)
			return pnstrdup(entry, eq - entry);
	return NULL;
}

static void
warn_entry(Oid dbid, Oid roleid, const char *spelled)
{
	/*
	 * RESET matches the stored name case-sensitively against the setting's
	 * own spelling, so an entry stored as "Anthropic.API_Key" can only go
	 * with RESET ALL.
	 */
	bool		canonical = strcmp(spelled, "anthropic.api_key") == 0 ||
		strcmp(spelled, "anthropic.environment_key") == 0;
	const char *setting = canonical ? spelled : "ALL";
	char	   *role = OidIsValid(roleid) ? GetUserNameFromId(roleid, true) : NULL;
	char	   *db = OidIsValid(dbid) ? get_database_name(dbid) : NULL;
	const char *where;
	const char *reset;

	if (OidIsValid(roleid) && role == NULL)
		role = psprintf("%u", roleid);
	if (OidIsValid(dbid) && db == NULL)
		db = psprintf("%u", dbid);
	if (role && db)
	{
		where = psprintf("role \"%s\" in database \"%s\"", role, db);
		reset = psprintf("ALTER ROLE %s IN DATABASE %s RESET %s;",
						 quote_identifier(role), quote_identifier(db), setting);
	}
	else if (role)
	{
		where = psprintf("role \"%s\"", role);
		reset = psprintf("ALTER ROLE %s RESET %s;", quote_identifier(role), setting);
	}
	else
	{
		where = psprintf("database \"%s\"", db ? db : "?");
		reset = psprintf("ALTER DATABASE %s RESET %s;", quote_identifier(db ? db : "?"), setting);
	}
	ereport(WARNING,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("%s is stored in pg_db_role_setting for %s", spelled, where),
			 errdetail("Every role can read pg_db_role_setting; the key should be considered exposed.%s",
					   canonical ? "" : " RESET ALL also removes the other settings stored there."),
			 errhint("Remove it with %s and set the key in postgresql.conf or with ALTER SYSTEM.", reset)));
}

void
ae_keycheck_main(Datum arg)
{
	Relation	rel;
	SysScanDesc scan;
	HeapTuple	tup;

	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(ae_sync_database && *ae_sync_database ?
										 ae_sync_database : "postgres", NULL, 0);

	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	rel = table_open(DbRoleSettingRelationId, AccessShareLock);
	scan = systable_beginscan(rel, InvalidOid, false, NULL, 0, NULL);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Form_pg_db_role_setting form = (Form_pg_db_role_setting) GETSTRUCT(tup);
		bool		isnull;
		Datum		d = heap_getattr(tup, Anum_pg_db_role_setting_setconfig,
									 RelationGetDescr(rel), &isnull);
		Datum	   *elems;
		bool	   *nulls;
		int			n;
		int			i;

		if (isnull)
			continue;
		deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false, TYPALIGN_INT,
						  &elems, &nulls, &n);
		for (i = 0; i < n; i++)
		{
			char	   *setting;

			if (nulls[i])
				continue;
			setting = stored_key_setting(TextDatumGetCString(elems[i]));
			if (setting)
				warn_entry(form->setdatabase, form->setrole, setting);
		}
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	PopActiveSnapshot();
	CommitTransactionCommand();
	proc_exit(0);
}
