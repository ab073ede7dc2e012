-- anthropic_env 0.1.0: the Anthropic Environments API in SQL.
\echo Use "CREATE EXTENSION anthropic_env" to load this file. \quit

-- Row types ---------------------------------------------------------------

CREATE TYPE anthropic.environment AS (
	id text,
	name text,
	description text,
	config_type text,
	config jsonb,
	metadata jsonb,
	scope text,
	created_at timestamptz,
	updated_at timestamptz,
	archived_at timestamptz,
	raw jsonb
);
COMMENT ON TYPE anthropic.environment IS
	'An environment as the API returns it; raw holds the whole object, fields unknown to this version included';

CREATE TYPE anthropic.work_item AS (
	id text,
	environment_id text,
	state text,
	data_type text,
	data_id text,
	metadata jsonb,
	created_at timestamptz,
	acknowledged_at timestamptz,
	started_at timestamptz,
	latest_heartbeat_at timestamptz,
	stop_requested_at timestamptz,
	stopped_at timestamptz,
	secret text,
	raw jsonb
);
COMMENT ON TYPE anthropic.work_item IS
	'A work item of a self-hosted environment; secret is set only by work_poll and is credential material';

CREATE TYPE anthropic.work_heartbeat AS (
	last_heartbeat text,
	last_heartbeat_at timestamptz,
	lease_extended boolean,
	state text,
	ttl_seconds integer
);
COMMENT ON TYPE anthropic.work_heartbeat IS
	'Answer to a heartbeat; echo last_heartbeat verbatim as the next expected_last_heartbeat';

CREATE TYPE anthropic.work_queue_stats AS (
	depth bigint,
	pending bigint,
	oldest_queued_at timestamptz,
	workers_polling integer
);
COMMENT ON TYPE anthropic.work_queue_stats IS
	'Work queue statistics of a self-hosted environment';

-- Environments ------------------------------------------------------------

CREATE FUNCTION anthropic.env_create(body jsonb)
RETURNS anthropic.environment
AS 'MODULE_PATHNAME', 'ae_env_create'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION anthropic.env_create(jsonb) IS
	'Creates an environment from a JSON object (name, config, description, metadata, scope); never retried after an ambiguous failure';

CREATE FUNCTION anthropic.env_get(environment_id text, missing_ok boolean DEFAULT false)
RETURNS anthropic.environment
AS 'MODULE_PATHNAME', 'ae_env_get'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION anthropic.env_get(text, boolean) IS
	'Fetches one environment; with missing_ok, an unknown id gives NULL instead of an error';

-- The C function streams one row per call.  env_list() wraps it in an
-- inlinable SQL function that calls it from a target list: PostgreSQL
-- materializes set-returning functions called in FROM, which would fetch
-- every page before a LIMIT could stop it.  Inlining needs the wrapper to
-- be STABLE and not STRICT; the C function underneath is VOLATILE STRICT.
CREATE FUNCTION anthropic._env_list_rows(include_archived boolean, page_size integer)
RETURNS SETOF anthropic.environment
AS 'MODULE_PATHNAME', 'ae_env_list_rows'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE ROWS 100;
COMMENT ON FUNCTION anthropic._env_list_rows(boolean, integer) IS
	'Internal: row source of env_list(); call env_list() instead';

CREATE FUNCTION anthropic.env_list(include_archived boolean DEFAULT false, page_size integer DEFAULT 100)
RETURNS SETOF anthropic.environment
LANGUAGE sql STABLE PARALLEL UNSAFE ROWS 100
AS $$
	SELECT (r).* FROM (SELECT anthropic._env_list_rows(include_archived, page_size) AS r OFFSET 0) AS s
$$;
COMMENT ON FUNCTION anthropic.env_list(boolean, integer) IS
	'Lists environments, fetching pages of page_size lazily as rows are consumed';

CREATE FUNCTION anthropic.env_list_page(page_limit integer DEFAULT NULL, page text DEFAULT NULL,
										include_archived boolean DEFAULT false)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'ae_env_list_page'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION anthropic.env_list_page(integer, text, boolean) IS
	'Fetches one raw page of environments, {data, next_page}; pass next_page back as page for the next one';

CREATE FUNCTION anthropic.env_update(environment_id text, patch jsonb)
RETURNS anthropic.environment
AS 'MODULE_PATHNAME', 'ae_env_update'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION anthropic.env_update(text, jsonb) IS
	'Updates an environment with merge semantics: omitted fields are kept, null clears, a metadata key set to null is removed';

CREATE FUNCTION anthropic.env_delete(environment_id text, missing_ok boolean DEFAULT false)
RETURNS boolean
AS 'MODULE_PATHNAME', 'ae_env_delete'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION anthropic.env_delete(text, boolean) IS
	'Deletes an environment; returns false instead of raising when missing_ok and it does not exist';

CREATE FUNCTION anthropic.env_archive(environment_id text)
RETURNS anthropic.environment
AS 'MODULE_PATHNAME', 'ae_env_archive'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION anthropic.env_archive(text) IS
	'Archives an environment and returns it with archived_at set';

CREATE FUNCTION anthropic.env_get_many(environment_ids text[], concurrency integer DEFAULT 8)
RETURNS SETOF anthropic.environment
AS 'MODULE_PATHNAME', 'ae_env_get_many'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION anthropic.env_get_many(text[], integer) IS
	'Fetches many environments with up to concurrency requests in flight (1-64), in input order; missing ids are skipped with a NOTICE';

-- Work queue --------------------------------------------------------------

CREATE FUNCTION anthropic.work_poll(environment_id text, block_ms integer DEFAULT NULL,
									reclaim_older_than_ms integer DEFAULT NULL,
									worker_id text DEFAULT NULL)
RETURNS SETOF anthropic.work_item
AS 'MODULE_PATHNAME', 'ae_work_poll'
LANGUAGE C VOLATILE PARALLEL UNSAFE ROWS 1;
COMMENT ON FUNCTION anthropic.work_poll(text, integer, integer, text) IS
	'Long-polls for one work item (0 or 1 row); block_ms 1-999 waits for work, worker_id is sent as anthropic-worker-id';

CREATE FUNCTION anthropic.work_ack(environment_id text, work_id text)
RETURNS anthropic.work_item
AS 'MODULE_PATHNAME', 'ae_work_ack'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION anthropic.work_ack(text, text) IS
	'Acknowledges a polled work item (queued -> starting)';

CREATE FUNCTION anthropic.work_heartbeat(environment_id text, work_id text,
										 expected_last_heartbeat text DEFAULT 'NO_HEARTBEAT',
										 desired_ttl_seconds integer DEFAULT NULL)
RETURNS anthropic.work_heartbeat
AS 'MODULE_PATHNAME', 'ae_work_heartbeat'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION anthropic.work_heartbeat(text, text, text, integer) IS
	'Extends a work item''s lease; a stale expected_last_heartbeat raises serialization_failure (40001)';

CREATE FUNCTION anthropic.work_stop(environment_id text, work_id text, force boolean DEFAULT false)
RETURNS anthropic.work_item
AS 'MODULE_PATHNAME', 'ae_work_stop'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION anthropic.work_stop(text, text, boolean) IS
	'Stops a work item: gracefully (stopping) or, with force, at once (stopped)';

CREATE FUNCTION anthropic.work_get(environment_id text, work_id text, missing_ok boolean DEFAULT false)
RETURNS anthropic.work_item
AS 'MODULE_PATHNAME', 'ae_work_get'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION anthropic.work_get(text, text, boolean) IS
	'Fetches one work item; with missing_ok, an unknown id gives NULL';

CREATE FUNCTION anthropic._work_list_rows(environment_id text, page_size integer)
RETURNS SETOF anthropic.work_item
AS 'MODULE_PATHNAME', 'ae_work_list_rows'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE ROWS 100;
COMMENT ON FUNCTION anthropic._work_list_rows(text, integer) IS
	'Internal: row source of work_list(); call work_list() instead';

CREATE FUNCTION anthropic.work_list(environment_id text, page_size integer DEFAULT 100)
RETURNS SETOF anthropic.work_item
LANGUAGE sql STABLE PARALLEL UNSAFE ROWS 100
AS $$
	SELECT (r).* FROM (SELECT anthropic._work_list_rows(environment_id, page_size) AS r OFFSET 0) AS s
$$;
COMMENT ON FUNCTION anthropic.work_list(text, integer) IS
	'Lists the work items of an environment, fetching pages lazily';

CREATE FUNCTION anthropic.work_update(environment_id text, work_id text, metadata jsonb)
RETURNS anthropic.work_item
AS 'MODULE_PATHNAME', 'ae_work_update'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION anthropic.work_update(text, text, jsonb) IS
	'Merges metadata into a work item; a key set to null is removed';

CREATE FUNCTION anthropic.work_stats(environment_id text)
RETURNS anthropic.work_queue_stats
AS 'MODULE_PATHNAME', 'ae_work_stats'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION anthropic.work_stats(text) IS
	'Queue statistics of an environment: depth, pending, oldest_queued_at, workers_polling';


-- Local mirror ------------------------------------------------------------
--
-- Filled by anthropic.sync(), which the background worker and pg_cron call.
-- synced_at is when the row last changed in the mirror (unchanged rows are
-- never rewritten); the time of the last sync is in sync_runs.

CREATE TABLE anthropic.environments (
	id text PRIMARY KEY,
	name text,
	description text,
	config_type text,
	config jsonb,
	metadata jsonb,
	scope text,
	created_at timestamptz,
	updated_at timestamptz,
	archived_at timestamptz,
	raw jsonb NOT NULL,
	first_seen_at timestamptz NOT NULL DEFAULT now(),
	synced_at timestamptz NOT NULL DEFAULT now(),
	deleted_at timestamptz
);
CREATE INDEX environments_deleted_at_idx ON anthropic.environments (deleted_at);
CREATE INDEX environments_archived_at_idx ON anthropic.environments (archived_at);
COMMENT ON TABLE anthropic.environments IS
	'Mirror of the remote environments; deleted_at is set when one stops appearing in the list';

CREATE TABLE anthropic.work_items (
	id text NOT NULL,
	environment_id text NOT NULL,
	state text,
	data_type text,
	data_id text,
	metadata jsonb,
	created_at timestamptz,
	acknowledged_at timestamptz,
	started_at timestamptz,
	latest_heartbeat_at timestamptz,
	stop_requested_at timestamptz,
	stopped_at timestamptz,
	raw jsonb NOT NULL,
	first_seen_at timestamptz NOT NULL DEFAULT now(),
	synced_at timestamptz NOT NULL DEFAULT now(),
	deleted_at timestamptz,
	PRIMARY KEY (environment_id, id),
	CHECK (NOT raw ? 'secret')
);
CREATE INDEX work_items_deleted_at_idx ON anthropic.work_items (deleted_at);
COMMENT ON TABLE anthropic.work_items IS
	'Mirror of the work items of self-hosted environments (anthropic.sync_work); the secret is never stored';

CREATE TABLE anthropic.work_queue_stats_history (
	environment_id text NOT NULL,
	observed_at timestamptz NOT NULL,
	depth bigint,
	pending bigint,
	oldest_queued_at timestamptz,
	workers_polling integer,
	PRIMARY KEY (environment_id, observed_at)
);
CREATE INDEX work_queue_stats_history_observed_at_idx ON anthropic.work_queue_stats_history (observed_at);
COMMENT ON TABLE anthropic.work_queue_stats_history IS
	'One queue-statistics row per self-hosted environment and sync (anthropic.sync_work)';

CREATE TABLE anthropic.sync_runs (
	run_id bigserial PRIMARY KEY,
	started_at timestamptz NOT NULL,
	finished_at timestamptz NOT NULL,
	status text NOT NULL CHECK (status IN ('ok', 'error')),
	seen integer NOT NULL DEFAULT 0,
	inserted integer NOT NULL DEFAULT 0,
	updated integer NOT NULL DEFAULT 0,
	marked_deleted integer NOT NULL DEFAULT 0,
	work_items_seen integer NOT NULL DEFAULT 0,
	error text
);
CREATE INDEX sync_runs_started_at_idx ON anthropic.sync_runs (started_at);
COMMENT ON TABLE anthropic.sync_runs IS
	'One row per anthropic.sync() run that completed or recorded its error';

-- The mirror is data, not schema: pg_dump keeps it.
SELECT pg_catalog.pg_extension_config_dump('anthropic.environments', '');
SELECT pg_catalog.pg_extension_config_dump('anthropic.work_items', '');
SELECT pg_catalog.pg_extension_config_dump('anthropic.work_queue_stats_history', '');
SELECT pg_catalog.pg_extension_config_dump('anthropic.sync_runs', '');
SELECT pg_catalog.pg_extension_config_dump('anthropic.sync_runs_run_id_seq', '');

CREATE FUNCTION anthropic.sync(raise_on_error boolean DEFAULT true, page_size integer DEFAULT 1000)
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
			WITH envs AS MATERIALIZED (
				SELECT id FROM anthropic.environments
				WHERE config_type = 'self_hosted' AND deleted_at IS NULL AND archived_at IS NULL
			), src AS MATERIALIZED (
				SELECT w.* FROM envs e, LATERAL anthropic.work_list(e.id, sync.page_size) w
			), stats AS (
				INSERT INTO anthropic.work_queue_stats_history
					(environment_id, observed_at, depth, pending, oldest_queued_at, workers_polling)
				SELECT e.id, now(), s.depth, s.pending, s.oldest_queued_at, s.workers_polling
				FROM envs e, LATERAL anthropic.work_stats(e.id) s
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
				WHERE m.deleted_at IS NULL AND NOT EXISTS
					(SELECT 1 FROM src WHERE src.environment_id = m.environment_id AND src.id = m.id)
				RETURNING 1
			)
			-- Data-modifying CTEs run to completion whether read or not.
			SELECT count(*) INTO n_work FROM src;
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
									 marked_deleted, work_items_seen)
	VALUES (t0, clock_timestamp(), 'ok', n_seen, n_inserted, n_updated, n_deleted, n_work)
	RETURNING * INTO run;
	RETURN run;
END;
$$;
COMMENT ON FUNCTION anthropic.sync(boolean, integer) IS
	'One full sync of the mirror in the caller''s transaction; with raise_on_error => false a failure is recorded in sync_runs and returned instead of raised';

CREATE FUNCTION anthropic.sync_now()
RETURNS boolean
AS 'MODULE_PATHNAME', 'ae_sync_now'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION anthropic.sync_now() IS
	'Wakes the sync background worker for a run now; false when no worker is running';

CREATE FUNCTION anthropic._sync_worker_state(OUT pid integer, OUT next_run_at timestamptz,
											 OUT last_wakeup_at timestamptz, OUT consecutive_failures integer)
RETURNS record
AS 'MODULE_PATHNAME', 'ae_sync_worker_state'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION anthropic._sync_worker_state() IS
	'Internal: the sync worker''s shared state; read anthropic.sync_status instead';

CREATE VIEW anthropic.sync_status AS
SELECT w.pid AS worker_pid,
	   r.run_id AS last_run_id,
	   r.started_at AS last_run_started_at,
	   r.finished_at AS last_run_finished_at,
	   r.status AS last_run_status,
	   w.next_run_at,
	   w.consecutive_failures,
	   e.error AS last_error,
	   e.finished_at AS last_error_at
FROM anthropic._sync_worker_state() w
LEFT JOIN LATERAL (SELECT * FROM anthropic.sync_runs ORDER BY run_id DESC LIMIT 1) r ON true
LEFT JOIN LATERAL (SELECT * FROM anthropic.sync_runs WHERE status = 'error' ORDER BY run_id DESC LIMIT 1) e ON true;
COMMENT ON VIEW anthropic.sync_status IS
	'The sync worker (pid, next planned run, failures in a row) with the last run and the last error';

-- Request statistics ----------------------------------------------------

CREATE FUNCTION anthropic._request_stats(
	OUT endpoint text, OUT calls bigint, OUT errors_4xx bigint, OUT errors_5xx bigint,
	OUT errors_transport bigint, OUT retries bigint, OUT total_ms double precision,
	OUT mean_ms double precision, OUT max_ms double precision, OUT bytes_sent bigint,
	OUT bytes_received bigint, OUT last_error_at timestamptz, OUT last_request_id text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'ae_request_stats'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION anthropic._request_stats() IS
	'Internal: row source of anthropic.request_stats';

CREATE VIEW anthropic.request_stats AS SELECT * FROM anthropic._request_stats();
COMMENT ON VIEW anthropic.request_stats IS
	'Calls to the API per endpoint since the last reset: errors by class, retries, time and bytes; cluster-wide when the library is preloaded, per backend otherwise';

CREATE FUNCTION anthropic.request_stats_reset()
RETURNS void
AS 'MODULE_PATHNAME', 'ae_request_stats_reset'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION anthropic.request_stats_reset() IS
	'Zeroes anthropic.request_stats; superusers and roles granted EXECUTE only';

-- Privileges: nothing is callable or readable until a superuser grants it.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA anthropic FROM PUBLIC;
