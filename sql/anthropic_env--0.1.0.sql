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

-- Privileges: nothing is callable until a superuser grants it.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA anthropic FROM PUBLIC;
