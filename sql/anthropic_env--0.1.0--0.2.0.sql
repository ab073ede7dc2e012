-- anthropic_env 0.1.0 to 0.2.0.  A fresh CREATE EXTENSION at 0.2.0 runs
-- anthropic_env--0.1.0.sql and then this file, so every SQL change of
-- 0.2.0 lives here and nowhere else.
\echo Use "ALTER EXTENSION anthropic_env UPDATE TO '0.2.0'" to load this file. \quit

-- Per-environment keys (anthropic.environment_keys_file) ------------------
--
-- sync() with anthropic.sync_work lists each self-hosted environment's work
-- with that environment's own key; an environment whose list is refused
-- (401, 403) or gone (404) keeps its mirrored items and is named here,
-- and the rest of the run commits.

ALTER TABLE anthropic.sync_runs ADD COLUMN environment_errors jsonb;
COMMENT ON COLUMN anthropic.sync_runs.environment_errors IS
	'Environments whose work list failed in this run (401, 403, 404), as {environment_id: "SQLSTATE: message"}; their mirrored work items were kept as they were';

CREATE OR REPLACE FUNCTION anthropic.sync(raise_on_error boolean DEFAULT true, page_size integer DEFAULT 1000)
RETURNS anthropic.sync_runs
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	run anthropic.sync_runs;
	t0 timestamptz := clock_timestamp();
	n_seen integer := 0;
	n_inserted integer := 0;
	n_updated integer := 0;
	n_deleted integer := 0;
	n_work integer := 0;
	retention integer;
	err_msg text;
	err_state text;
	env_id text;
	n_env_work integer;
	env_errors jsonb;
BEGIN
	IF pg_is_in_recovery() THEN
		RAISE EXCEPTION 'cannot sync on a hot standby'
			USING ERRCODE = 'read_only_sql_transaction',
				  HINT = 'The mirror is replicated from the primary; sync there.';
	END IF;
	-- One sync at a time (worker, pg_cron, manual calls).
	PERFORM pg_advisory_xact_lock(hashtext('anthropic.sync'));

	BEGIN
		-- Every page is fetched before anything is written: a failure on
		-- any page leaves the mirror as it was.
		WITH src AS MATERIALIZED (
			SELECT * FROM anthropic.env_list(include_archived => true, page_size => sync.page_size)
		), changed AS (
			SELECT s.* FROM src s LEFT JOIN anthropic.environments m ON m.id = s.id
			WHERE m.id IS NULL OR m.raw IS DISTINCT FROM s.raw OR m.deleted_at IS NOT NULL
		), up AS (
			INSERT INTO anthropic.environments AS m
				(id, name, description, config_type, config, metadata, scope,
				 created_at, updated_at, archived_at, raw, first_seen_at, synced_at, deleted_at)
			SELECT id, name, description, config_type, config, metadata, scope,
				   created_at, updated_at, archived_at, raw, now(), now(), NULL
			FROM changed
			ON CONFLICT (id) DO UPDATE SET
				name = EXCLUDED.name, description = EXCLUDED.description,
				config_type = EXCLUDED.config_type, config = EXCLUDED.config,
				metadata = EXCLUDED.metadata, scope = EXCLUDED.scope,
				created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at,
				archived_at = EXCLUDED.archived_at, raw = EXCLUDED.raw,
				synced_at = now(), deleted_at = NULL
			RETURNING (xmax = 0) AS inserted
		), gone AS (
			UPDATE anthropic.environments m SET deleted_at = now(), synced_at = now()
			WHERE m.deleted_at IS NULL AND NOT EXISTS (SELECT 1 FROM src WHERE src.id = m.id)
			RETURNING 1
		)
		SELECT (SELECT count(*) FROM src),
			   (SELECT count(*) FILTER (WHERE inserted) FROM up),
			   (SELECT count(*) FILTER (WHERE NOT inserted) FROM up),
			   (SELECT count(*) FROM gone)
		INTO n_seen, n_inserted, n_updated, n_deleted;

		IF current_setting('anthropic.sync_work')::boolean THEN
			-- One environment at a time: each sends its own key, and one
			-- whose key is refused, or that is gone, keeps its mirrored items
			-- while the others are synced.
			FOR env_id IN
				SELECT id FROM anthropic.environments
				WHERE config_type = 'self_hosted' AND deleted_at IS NULL AND archived_at IS NULL
				ORDER BY id
			LOOP
				BEGIN
					WITH src AS MATERIALIZED (
						SELECT w.* FROM anthropic.work_list(env_id, sync.page_size) w
					), stats AS (
						INSERT INTO anthropic.work_queue_stats_history
							(environment_id, observed_at, depth, pending, oldest_queued_at, workers_polling)
						SELECT env_id, now(), s.depth, s.pending, s.oldest_queued_at, s.workers_polling
						FROM anthropic.work_stats(env_id) s
						RETURNING 1
					), changed AS (
						SELECT s.* FROM src s
						LEFT JOIN anthropic.work_items m ON m.environment_id = s.environment_id AND m.id = s.id
						WHERE m.id IS NULL OR m.raw IS DISTINCT FROM (s.raw - 'secret') OR m.deleted_at IS NOT NULL
					), up AS (
						INSERT INTO anthropic.work_items AS m
							(id, environment_id, state, data_type, data_id, metadata, created_at,
							 acknowledged_at, started_at, latest_heartbeat_at, stop_requested_at,
							 stopped_at, raw, first_seen_at, synced_at, deleted_at)
						SELECT id, environment_id, state, data_type, data_id, metadata, created_at,
							   acknowledged_at, started_at, latest_heartbeat_at, stop_requested_at,
							   stopped_at, raw - 'secret', now(), now(), NULL
						FROM changed
						ON CONFLICT (environment_id, id) DO UPDATE SET
							state = EXCLUDED.state, data_type = EXCLUDED.data_type,
							data_id = EXCLUDED.data_id, metadata = EXCLUDED.metadata,
							created_at = EXCLUDED.created_at, acknowledged_at = EXCLUDED.acknowledged_at,
							started_at = EXCLUDED.started_at,
							latest_heartbeat_at = EXCLUDED.latest_heartbeat_at,
							stop_requested_at = EXCLUDED.stop_requested_at,
							stopped_at = EXCLUDED.stopped_at, raw = EXCLUDED.raw,
							synced_at = now(), deleted_at = NULL
						RETURNING 1
					), gone AS (
						UPDATE anthropic.work_items m SET deleted_at = now(), synced_at = now()
						WHERE m.environment_id = env_id AND m.deleted_at IS NULL AND NOT EXISTS
							(SELECT 1 FROM src WHERE src.id = m.id)
						RETURNING 1
					)
					-- Data-modifying CTEs run to completion whether read or not.
					SELECT count(*) INTO n_env_work FROM src;
					n_work := n_work + n_env_work;
				EXCEPTION
					WHEN invalid_authorization_specification OR insufficient_privilege
						OR undefined_object THEN
					GET STACKED DIAGNOSTICS err_msg = MESSAGE_TEXT, err_state = RETURNED_SQLSTATE;
					env_errors := coalesce(env_errors, '{}'::jsonb) || jsonb_build_object(env_id, err_state || ': ' || err_msg);
				END;
			END LOOP;
		END IF;
	EXCEPTION WHEN OTHERS THEN
		-- The sub-transaction is rolled back: the mirror is as it was.
		GET STACKED DIAGNOSTICS err_msg = MESSAGE_TEXT, err_state = RETURNED_SQLSTATE;
		INSERT INTO anthropic.sync_runs (started_at, finished_at, status, error)
		VALUES (t0, clock_timestamp(), 'error', err_state || ': ' || err_msg)
		RETURNING * INTO run;
		IF raise_on_error THEN
			RAISE;
		END IF;
		RETURN run;
	END;

	SELECT setting::integer INTO retention FROM pg_settings WHERE name = 'anthropic.history_retention';
	IF retention > 0 THEN
		DELETE FROM anthropic.sync_runs WHERE started_at < now() - make_interval(secs => retention);
		DELETE FROM anthropic.work_queue_stats_history WHERE observed_at < now() - make_interval(secs => retention);
	END IF;

	INSERT INTO anthropic.sync_runs (started_at, finished_at, status, seen, inserted, updated,
									 marked_deleted, work_items_seen, environment_errors)
	VALUES (t0, clock_timestamp(), 'ok', n_seen, n_inserted, n_updated, n_deleted, n_work, env_errors)
	RETURNING * INTO run;
	RETURN run;
END;
$$;
COMMENT ON FUNCTION anthropic.sync(boolean, integer) IS
	'One full sync of the mirror in the caller''s transaction; with raise_on_error => false a failure is recorded in sync_runs and returned instead of raised; with anthropic.sync_work an environment whose work list fails (401, 403, 404) is recorded in environment_errors and the rest commits';

-- The lease keeper ----------------------------------------------------------
--
-- Two background workers in anthropic.sync_database poll the served
-- environments on demand, ack, and keep the lease of every item held;
-- sessions claim items with work_claim() and finish them with
-- work_finish(), which takes effect at commit.  README "The database as an
-- environment worker".

CREATE TABLE anthropic.served_environments (
	environment_id text PRIMARY KEY,
	prefetch integer NOT NULL DEFAULT 0 CHECK (prefetch BETWEEN 0 AND 100),
	worker_id text,
	served_since timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE anthropic.served_environments IS
	'Environments this database works for (anthropic.serve); the lease keeper polls them on demand';
SELECT pg_catalog.pg_extension_config_dump('anthropic.served_environments', '');

-- The keeper's record of the items it holds, read back after a restart.
-- Not dumped: leases belong to this server and are worthless elsewhere.
CREATE TABLE anthropic.held_work (
	work_id text PRIMARY KEY,
	environment_id text NOT NULL,
	data_type text,
	data_id text,
	metadata jsonb,
	state text NOT NULL CHECK (state IN ('ready', 'claimed', 'stop_requested', 'finished', 'lost')),
	consumer text,
	claimed_pid integer,
	taken_at timestamptz,
	claimed_at timestamptz,
	last_beat_at timestamptz,
	lease_expires_at timestamptz,
	last_heartbeat text,
	ttl_seconds integer,
	remote_state text,
	stop_sent_at timestamptz,
	done_at timestamptz,
	error text,
	healthcheck boolean NOT NULL DEFAULT false,
	beat_unanswered boolean NOT NULL DEFAULT false,
	ack_unanswered boolean NOT NULL DEFAULT false,
	beat_unanswered_at timestamptz
);
COMMENT ON TABLE anthropic.held_work IS
	'Internal: the lease keeper''s record of the items it holds, read back after a restart; read anthropic.leases instead';
COMMENT ON COLUMN anthropic.held_work.last_heartbeat IS
	'The lease''s last heartbeat, echoed verbatim; NULL while the NO_HEARTBEAT claim after the ack is not confirmed (the keeper sends it again)';
COMMENT ON COLUMN anthropic.held_work.beat_unanswered IS
	'The last beat or claim went unanswered and may have been applied: the next beat''s 412 showing the lease it set is its success';
COMMENT ON COLUMN anthropic.held_work.beat_unanswered_at IS
	'When the latest unanswered beat or claim went out (or later): the lease it may have set is over a TTL after it, and a 412 showing a running lease is then another worker''s';
COMMENT ON COLUMN anthropic.held_work.ack_unanswered IS
	'Stored at the poll, before its ack: the ack''s answer is not seen yet, so the keeper acks again (a 409 there is reconciled) before it claims the lease';

-- UNLOGGED: in no WAL, no base backup, no standby; not in pg_dump (no
-- config_dump); crash recovery empties it, and the keeper then releases
-- the items whose secret is gone.
CREATE UNLOGGED TABLE anthropic.work_secrets (
	work_id text PRIMARY KEY,
	secret text NOT NULL
);
COMMENT ON TABLE anthropic.work_secrets IS
	'Internal: the secret of each held item, handed out only by anthropic.work_claim; UNLOGGED, so in no WAL, base backup or dump';
-- Written by work_finish() in the caller's transaction, so that a commit
-- keeps the finish and a transaction left open locks none of the keeper's
-- held_work rows.
CREATE TABLE anthropic.finished_work (
	work_id text PRIMARY KEY,
	finished_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE anthropic.finished_work IS
	'Internal: items finished by anthropic.work_finish in committed transactions, until the lease keeper forgets them';
REVOKE ALL ON anthropic.served_environments, anthropic.held_work, anthropic.work_secrets,
	anthropic.finished_work FROM PUBLIC;

CREATE TYPE anthropic.claimed_work AS (
	work_id text,
	environment_id text,
	data_type text,
	data_id text,
	metadata jsonb,
	secret text,
	claimed_at timestamptz,
	lease_expires_at timestamptz
);
COMMENT ON TYPE anthropic.claimed_work IS
	'A work item claimed by this session with anthropic.work_claim, with its secret';

-- The lease table is cluster-wide, the keeper's tables (and the secrets)
-- are in anthropic.sync_database only: elsewhere an item would be handed
-- out without its secret, so the keeper's functions refuse to run there.
CREATE FUNCTION anthropic._require_keeper_database()
RETURNS void
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF current_setting('anthropic.sync_database', true) IS DISTINCT FROM current_database() THEN
		RAISE EXCEPTION 'the anthropic_env lease keeper does not run in database "%"', current_database()
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('anthropic.sync_database is "%s".', coalesce(current_setting('anthropic.sync_database', true), '')),
				  HINT = 'Call the keeper''s functions in the database named by anthropic.sync_database.';
	END IF;
END;
$$;
COMMENT ON FUNCTION anthropic._require_keeper_database() IS
	'Internal: raises 55000 unless this is the database of anthropic.sync_database, where the lease keeper runs';

CREATE FUNCTION anthropic.serve(environment_id text, prefetch integer DEFAULT 0, worker_id text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM anthropic._require_keeper_database();
	IF environment_id IS NULL OR environment_id = '' OR environment_id ~ '[/?#[:cntrl:]]'
		OR environment_id IN ('.', '..') OR environment_id LIKE ';%' THEN
		RAISE EXCEPTION 'invalid environment_id' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF prefetch IS NULL OR prefetch NOT BETWEEN 0 AND 100 THEN
		RAISE EXCEPTION 'prefetch must be between 0 and 100' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF worker_id = '' OR worker_id ~ '[[:cntrl:]]' THEN
		RAISE EXCEPTION 'invalid worker_id' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- The keeper serves at most 256 environments; more would be ignored silently.
	IF NOT EXISTS (SELECT 1 FROM anthropic.served_environments s WHERE s.environment_id = serve.environment_id)
		AND (SELECT count(*) FROM anthropic.served_environments) >= 256 THEN
		RAISE EXCEPTION 'too many served environments'
			USING ERRCODE = 'program_limit_exceeded',
			DETAIL = 'The lease keeper serves at most 256 environments.',
			HINT = 'Unserve an environment first.';
	END IF;
	INSERT INTO anthropic.served_environments AS s (environment_id, prefetch, worker_id)
	VALUES (serve.environment_id, serve.prefetch, serve.worker_id)
	ON CONFLICT ON CONSTRAINT served_environments_pkey DO UPDATE
		SET prefetch = EXCLUDED.prefetch, worker_id = EXCLUDED.worker_id;
END;
$$;
COMMENT ON FUNCTION anthropic.serve(text, integer, text) IS
	'This database works for the environment: the lease keeper polls it while sessions wait in work_claim or fewer than prefetch items are ready';

CREATE FUNCTION anthropic.unserve(environment_id text)
RETURNS boolean
LANGUAGE sql VOLATILE STRICT PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT anthropic._require_keeper_database();
	WITH d AS (DELETE FROM anthropic.served_environments s WHERE s.environment_id = unserve.environment_id RETURNING 1)
	SELECT count(*) > 0 FROM d;
$$;
COMMENT ON FUNCTION anthropic.unserve(text) IS
	'Stops polling the environment; within about a second its ready items are released (shown lost, no longer beaten), claimed ones are beaten until their session finishes or lets them go';

CREATE FUNCTION anthropic.work_claim(environment_id text, wait interval DEFAULT '0', consumer text DEFAULT NULL)
RETURNS SETOF anthropic.claimed_work
AS 'MODULE_PATHNAME', 'ae_work_claim'
LANGUAGE C VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION anthropic.work_claim(text, interval, text) IS
	'Zero or one ready item of a served environment, claimed by this session; waits up to wait (interruptibly)';

CREATE FUNCTION anthropic.work_finish(work_id text)
RETURNS void
AS 'MODULE_PATHNAME', 'ae_work_finish'
LANGUAGE C VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION anthropic.work_finish(text) IS
	'Finishes a claimed item when the transaction commits (the keeper then stops it); raises 40001 if the lease is no longer held, so the results roll back';

CREATE FUNCTION anthropic.work_release(work_id text)
RETURNS void
AS 'MODULE_PATHNAME', 'ae_work_release'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION anthropic.work_release(text) IS
	'Hands a claimed item back to the local queue at once; its lease is kept';

CREATE FUNCTION anthropic.work_should_stop(work_id text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'ae_work_should_stop'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION anthropic.work_should_stop(text) IS
	'True when the item''s lease is lost, a stop was requested, or it is not held: a local read, no request';

CREATE FUNCTION anthropic._leases(
	OUT work_id text, OUT environment_id text, OUT data_type text, OUT data_id text,
	OUT state text, OUT consumer text, OUT claimed_pid integer, OUT taken_at timestamptz,
	OUT claimed_at timestamptz, OUT last_beat_at timestamptz, OUT lease_expires_at timestamptz,
	OUT remote_state text, OUT stop_sent_at timestamptz, OUT error text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'ae_leases_rows'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION anthropic._leases() IS
	'Internal: row source of anthropic.leases';

CREATE VIEW anthropic.leases AS SELECT * FROM anthropic._leases();
COMMENT ON VIEW anthropic.leases IS
	'One row per work item the database holds: ready, claimed, stop_requested, finished or lost; never the secret';

REVOKE ALL ON FUNCTION anthropic.serve(text, integer, text), anthropic.unserve(text),
	anthropic.work_claim(text, interval, text), anthropic.work_finish(text),
	anthropic.work_release(text), anthropic.work_should_stop(text), anthropic._leases(),
	anthropic._require_keeper_database()
	FROM PUBLIC;
