--
-- work: the self-hosted work queue, its state machine and what reaches the
-- server for each call (wire-notes.md).
--
SELECT fake.reset();
CREATE TEMP TABLE w_env AS
SELECT id FROM anthropic.env_create('{"name": "queue", "config": {"type": "self_hosted"}}');

-- poll, ack, heartbeat, stop and list use the environment key as a Bearer
-- token when it is set; get, update and stats use the API key.
SET anthropic.environment_key = 'sk-ant-env-fake-key';
SET anthropic.workspace_id = 'wrkspc_01work';

-- An empty queue: 0 rows, after about block_ms.
SELECT fake.clear_requests();
CREATE TEMP TABLE t AS SELECT clock_timestamp() AS t0;
SELECT count(*) AS items FROM anthropic.work_poll((SELECT id FROM w_env), block_ms => 300);
SELECT clock_timestamp() - t0 BETWEEN interval '250 ms' AND interval '2 s' AS waited_block_ms FROM t;

-- Enqueue (stands in for session creation), then poll with a worker id.
SELECT fake.mask(fake.enqueue(id, '{"data": {"type": "session", "id": "sesn_011abc"}, "metadata": {"k": "v"}}')->>'state') FROM w_env;
CREATE TEMP TABLE item AS
SELECT * FROM anthropic.work_poll((SELECT id FROM w_env), block_ms => 999, worker_id => 'sql-worker-1');
SELECT state, data_type, fake.mask(data_id) AS data_id, metadata, environment_id = (SELECT id FROM w_env) AS same_env,
       secret IS NOT NULL AS has_secret, created_at IS NOT NULL AS has_created, acknowledged_at
FROM item;

-- ack: queued -> starting.
SELECT a.state, a.acknowledged_at IS NOT NULL AS acknowledged
FROM item, LATERAL anthropic.work_ack(item.environment_id, item.id) a;

-- The first heartbeat claims the lease with NO_HEARTBEAT: starting -> active.
CREATE TEMP TABLE beats (n serial, hb anthropic.work_heartbeat);
INSERT INTO beats (hb)
SELECT anthropic.work_heartbeat(environment_id, id, 'NO_HEARTBEAT', desired_ttl_seconds => 60) FROM item;
SELECT n, fake.mask((hb).last_heartbeat) AS last_heartbeat, (hb).last_heartbeat_at IS NOT NULL AS parsed,
       (hb).lease_extended, (hb).state, (hb).ttl_seconds FROM beats;

-- Three more beats, each echoing the previous last_heartbeat verbatim.
DO $$
DECLARE
	prev text;
	hb anthropic.work_heartbeat;
	i int;
BEGIN
	FOR i IN 1..3 LOOP
		SELECT (b.hb).last_heartbeat INTO prev FROM beats b ORDER BY n DESC LIMIT 1;
		hb := anthropic.work_heartbeat((SELECT environment_id FROM item), (SELECT id FROM item), prev);
		INSERT INTO beats (hb) VALUES (hb);
	END LOOP;
END $$;
SELECT n, (hb).state, (hb).lease_extended,
       (hb).last_heartbeat_at > lag((hb).last_heartbeat_at) OVER (ORDER BY n) AS later
FROM beats ORDER BY n;
SELECT (SELECT (hb).last_heartbeat FROM beats WHERE n = 1) < (SELECT (hb).last_heartbeat FROM beats WHERE n = 4) AS moved;

-- A stale expected_last_heartbeat: 40001, with the current state in DETAIL.
DO $$
DECLARE
	d text;
BEGIN
	PERFORM anthropic.work_heartbeat((SELECT environment_id FROM item), (SELECT id FROM item),
		(SELECT (hb).last_heartbeat FROM beats WHERE n = 1));
	RAISE EXCEPTION 'stale heartbeat was accepted';
EXCEPTION WHEN serialization_failure THEN
	GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL;
	RAISE NOTICE 'lease lost: % | %', fake.mask(SQLERRM), fake.mask(d);
END $$;

-- update merges metadata; null deletes a key.
SELECT u.metadata FROM item, LATERAL anthropic.work_update(item.environment_id, item.id, '{"k": null, "phase": "running"}') u;

-- Graceful stop -> stopping; forced stop -> stopped; get shows it.
SELECT s.state, s.stop_requested_at IS NOT NULL AS stop_requested, s.stopped_at
FROM item, LATERAL anthropic.work_stop(item.environment_id, item.id) s;
SELECT s.state, s.stopped_at IS NOT NULL AS stopped
FROM item, LATERAL anthropic.work_stop(item.environment_id, item.id, force => true) s;
SELECT w.state, w.secret, w.metadata, w.started_at IS NOT NULL AS started, w.latest_heartbeat_at IS NOT NULL AS beat
FROM item, LATERAL anthropic.work_get(item.environment_id, item.id) w;

-- What reached the server, call by call.
SELECT n, method, path, query, body, status,
       headers->>'authorization' IS NOT NULL AS bearer, headers ? 'x-api-key' AS api_key,
       headers->>'anthropic-worker-id' AS worker_id, headers->>'anthropic-workspace-id' AS workspace,
       headers->>'content-type' AS content_type, headers->>'content-length' AS content_length
FROM fake.requests();

-- A stop on a stopped item is a conflict (409 -> 55000).
SET anthropic.max_retries = 0;
DO $$ BEGIN
	PERFORM anthropic.work_stop((SELECT environment_id FROM item), (SELECT id FROM item), true);
EXCEPTION WHEN object_not_in_prerequisite_state THEN RAISE NOTICE 'object_not_in_prerequisite_state: %', fake.mask(SQLERRM);
END $$;
RESET anthropic.max_retries;
SELECT fake.try(format('SELECT anthropic.work_get(%L, %L)', id, 'work_missing')) FROM w_env;
SELECT anthropic.work_get(id, 'work_missing', missing_ok => true) IS NULL AS missing FROM w_env;

-- An unacked item is handed out again after reclaim_older_than_ms.
SELECT fake.enqueue(id)->>'state' FROM w_env;
CREATE TEMP TABLE first_poll AS SELECT id FROM anthropic.work_poll((SELECT id FROM w_env), worker_id => 'sql-worker-1');
SELECT count(*) AS while_pending FROM anthropic.work_poll((SELECT id FROM w_env), reclaim_older_than_ms => 60000);
SELECT pg_sleep(0.3);
SELECT p.id = f.id AS reclaimed
FROM first_poll f, LATERAL anthropic.work_poll((SELECT id FROM w_env), reclaim_older_than_ms => 200, worker_id => 'sql-worker-2') p;

-- Stats: depth, pending, oldest item, distinct polling workers.
SELECT fake.enqueue(id)->>'state' FROM w_env;
SELECT fake.clear_requests();
SELECT depth, pending, oldest_queued_at IS NOT NULL AS has_oldest, workers_polling
FROM w_env, LATERAL anthropic.work_stats(w_env.id);
SELECT method, path, query, headers ? 'x-api-key' AS api_key, headers ? 'authorization' AS bearer,
       headers->>'anthropic-workspace-id' AS workspace
FROM fake.requests();

-- work_list pages lazily: LIMIT 1 sends one request, the full list one per page.
SELECT fake.clear_requests();
SELECT count(*) FROM (SELECT l.* FROM w_env, LATERAL anthropic.work_list(w_env.id, page_size => 1) l LIMIT 1) s;
SELECT fake.request_count();
SELECT count(*), count(DISTINCT l.id), bool_and(l.secret IS NULL) AS no_secrets
FROM w_env, LATERAL anthropic.work_list(w_env.id, page_size => 1) l;
SELECT n, path, query, headers->>'authorization' IS NOT NULL AS bearer FROM fake.requests();

-- Without an environment key, the API key stands in.
RESET anthropic.environment_key;
SELECT fake.clear_requests();
SELECT count(*) FROM anthropic.work_poll((SELECT id FROM w_env));
SELECT headers ? 'authorization' AS bearer, headers ? 'x-api-key' AS api_key FROM fake.requests();

-- Bad arguments are refused before sending.
SELECT fake.clear_requests();
SELECT fake.try(format('SELECT anthropic.work_poll(%L, block_ms => 0)', id)) FROM w_env;
SELECT fake.try(format('SELECT anthropic.work_poll(%L, block_ms => 1000)', id)) FROM w_env;
SELECT fake.try(format('SELECT anthropic.work_poll(%L, worker_id => %L)', id, E'w\r\nx-evil: 1')) FROM w_env;
SELECT fake.try(format('SELECT anthropic.work_poll(%L, reclaim_older_than_ms => -1)', id)) FROM w_env;
SELECT fake.try('SELECT anthropic.work_poll(NULL)');
SELECT fake.try(format('SELECT anthropic.work_ack(%L, %L)', id, '..')) FROM w_env;
SELECT fake.try(format('SELECT anthropic.work_heartbeat(%L, %L, desired_ttl_seconds => 0)', id, 'work_x')) FROM w_env;
SELECT fake.try(format('SELECT anthropic.work_update(%L, %L, %L)', id, 'work_x', '[]')) FROM w_env;
SELECT fake.try(format('SELECT count(*) FROM anthropic.work_list(%L, 0)', id)) FROM w_env;
SELECT fake.request_count() AS requests_sent;
RESET anthropic.workspace_id;
