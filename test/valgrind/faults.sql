-- test/valgrind/faults.sql: the transport's failure paths in ONE session,
-- for the server under valgrind (test/valgrind/run, second phase).  Errors
-- are expected; what matters is what memcheck says.  The fake API's URL
-- comes from the environment (FAKE_URL) for the \! curl lines.
\set ON_ERROR_STOP 0
\set VERBOSITY terse
SET anthropic.max_retries = 1;
SELECT id AS env FROM anthropic.env_create('{"name": "vg"}') \gset
SELECT id AS senv FROM anthropic.env_create('{"name": "vg-queue", "config": {"type": "self_hosted"}}') \gset
\! curl -s -o /dev/null -X POST "$FAKE_URL/_fake/environments/bulk" -d '{"count": 30}'

-- Answers that never complete: closed, closed mid-body, too slow, dripping.
\! curl -s -o /dev/null -X DELETE "$FAKE_URL/_fake/faults"
\! curl -s -o /dev/null -X POST "$FAKE_URL/_fake/faults" -d '{"path_regex": "^/v1/environments/env_", "close": true, "times": 3}'
SELECT name FROM anthropic.env_get(:'env');
\! curl -s -o /dev/null -X DELETE "$FAKE_URL/_fake/faults"
\! curl -s -o /dev/null -X POST "$FAKE_URL/_fake/faults" -d '{"path_regex": "^/v1/environments/env_", "truncate": true, "times": 3}'
SELECT name FROM anthropic.env_get(:'env');
SET anthropic.timeout_ms = 300;
\! curl -s -o /dev/null -X DELETE "$FAKE_URL/_fake/faults"
\! curl -s -o /dev/null -X POST "$FAKE_URL/_fake/faults" -d '{"path_regex": "^/v1/environments/env_", "delay_ms": 1000, "times": 2}'
SELECT name FROM anthropic.env_get(:'env');
\! curl -s -o /dev/null -X DELETE "$FAKE_URL/_fake/faults"
\! curl -s -o /dev/null -X POST "$FAKE_URL/_fake/faults" -d '{"path_regex": "^/v1/environments/env_", "drip_ms": 50, "times": 2}'
SELECT name FROM anthropic.env_get(:'env');
RESET anthropic.timeout_ms;

-- Malformed and oversized answers, and a create that is not retried.
\! curl -s -o /dev/null -X DELETE "$FAKE_URL/_fake/faults"
\! curl -s -o /dev/null -X POST "$FAKE_URL/_fake/faults" -d '{"path_regex": "^/v1/environments/env_", "status": 200, "body": "{\"id\": \"env_x\", \"na", "times": 1}'
SELECT name FROM anthropic.env_get(:'env');
\! curl -s -o /dev/null -X DELETE "$FAKE_URL/_fake/faults"
\! curl -s -o /dev/null -X POST "$FAKE_URL/_fake/faults" -d '{"path_regex": "^/v1/environments/env_", "status": 200, "body": "[1, 2]", "times": 1}'
SELECT name FROM anthropic.env_get(:'env');
\! curl -s -o /dev/null -X DELETE "$FAKE_URL/_fake/faults"
\! curl -s -o /dev/null -X POST "$FAKE_URL/_fake/faults" -d '{"path_regex": "^/v1/environments/env_", "status": 502, "content_type": "text/html", "body": "<html>bad gateway</html>", "headers": {"retry-after-ms": "1"}, "times": 2}'
SELECT name FROM anthropic.env_get(:'env');
SET anthropic.max_response_bytes = 2048;
SELECT count(*) FROM anthropic.env_list();
RESET anthropic.max_response_bytes;
\! curl -s -o /dev/null -X DELETE "$FAKE_URL/_fake/faults"
\! curl -s -o /dev/null -X POST "$FAKE_URL/_fake/faults" -d '{"method": "POST", "path_regex": "^/v1/environments$", "status": 500, "after": true, "times": 1}'
SELECT name FROM anthropic.env_create('{"name": "vg-once"}');

-- A page that fails in the middle of a list, then the list again.
\! curl -s -o /dev/null -X DELETE "$FAKE_URL/_fake/faults"
\! curl -s -o /dev/null -X POST "$FAKE_URL/_fake/faults" -d '{"method": "GET", "path_regex": "^/v1/environments$", "skip": 1, "close": true, "times": 2}'
SELECT count(*) FROM anthropic.env_list(page_size => 5);
SELECT count(*) FROM anthropic.env_list(page_size => 5);
SELECT count(*) FROM (SELECT * FROM anthropic.env_list(page_size => 3) LIMIT 4) s;

-- Cancels: during a transfer and during a backoff sleep.
SET statement_timeout = '300ms';
\! curl -s -o /dev/null -X DELETE "$FAKE_URL/_fake/faults"
\! curl -s -o /dev/null -X POST "$FAKE_URL/_fake/faults" -d '{"path_regex": "^/v1/environments/env_", "delay_ms": 3000, "times": 1}'
SELECT name FROM anthropic.env_get(:'env');
\! curl -s -o /dev/null -X DELETE "$FAKE_URL/_fake/faults"
\! curl -s -o /dev/null -X POST "$FAKE_URL/_fake/faults" -d '{"path_regex": "^/v1/environments/env_", "status": 429, "headers": {"retry-after": "5"}, "times": 1}'
SELECT name FROM anthropic.env_get(:'env');
RESET statement_timeout;
\! curl -s -o /dev/null -X DELETE "$FAKE_URL/_fake/faults"

-- Work queue: poll, ack, heartbeats (one stale: 412), stop, list, stats.
\setenv SENV :senv
\! curl -s -o /dev/null -X POST "$FAKE_URL/_fake/environments/$SENV/work" -d '{}'
SELECT id AS work FROM anthropic.work_poll(:'senv', block_ms => 50, worker_id => 'vg') \gset
SELECT state FROM anthropic.work_ack(:'senv', :'work');
SELECT last_heartbeat AS hb FROM anthropic.work_heartbeat(:'senv', :'work') \gset
SELECT state FROM anthropic.work_heartbeat(:'senv', :'work', expected_last_heartbeat => 'stale');
SELECT state FROM anthropic.work_heartbeat(:'senv', :'work', expected_last_heartbeat => :'hb');
SELECT state FROM anthropic.work_stop(:'senv', :'work', force => true);
SELECT count(*) FROM anthropic.work_list(:'senv');
SELECT depth FROM anthropic.work_stats(:'senv');
SELECT count(*) FROM anthropic.work_poll(:'senv', block_ms => 20);

-- Batches, when there is env_get_many: one id faulted, one missing.
\! curl -s -o /dev/null -X DELETE "$FAKE_URL/_fake/faults"
\! curl -s -o /dev/null -X POST "$FAKE_URL/_fake/faults" -d '{"path_regex": "^/v1/environments/env_", "close": true, "times": 1}'
SELECT count(*) FROM anthropic.env_get_many(ARRAY(SELECT id FROM anthropic.env_list() LIMIT 10), 4);
SELECT count(*) FROM anthropic.env_get_many(ARRAY[:'env', 'env_missing'], 2);

-- 300 seeded random answers: every parse and error path, in one backend.
SET anthropic.max_retries = 0;
SELECT set_config('vg.env', :'env', false) IS NOT NULL AS set;
\! curl -s -o /dev/null -X DELETE "$FAKE_URL/_fake/faults"
\! curl -s -o /dev/null -X POST "$FAKE_URL/_fake/faults" -d '{"path_regex": "^/v1/", "random": {"seed": 8}, "times": -1}'
DO $$
DECLARE
	env text := (SELECT current_setting('vg.env'));
BEGIN
	FOR i IN 1 .. 60 LOOP
		BEGIN PERFORM * FROM anthropic.env_get(env); EXCEPTION WHEN OTHERS THEN NULL; END;
		BEGIN PERFORM count(*) FROM anthropic.env_list(page_size => 5); EXCEPTION WHEN OTHERS THEN NULL; END;
		BEGIN PERFORM count(*) FROM anthropic.work_poll(env); EXCEPTION WHEN OTHERS THEN NULL; END;
		BEGIN PERFORM * FROM anthropic.work_heartbeat(env, 'work_x'); EXCEPTION WHEN OTHERS THEN NULL; END;
		BEGIN PERFORM * FROM anthropic.env_create('{"name": "r"}'); EXCEPTION WHEN OTHERS THEN NULL; END;
	END LOOP;
END $$;
\! curl -s -o /dev/null -X DELETE "$FAKE_URL/_fake/faults"
RESET anthropic.max_retries;
SELECT 'vg-done ' || name FROM anthropic.env_get(:'env');
