--
-- errors: every SQLSTATE of design.md section 1 that environment calls can
-- hit, caught by condition name, plus the retry policy and argument checks.
--
SELECT fake.reset();
SET anthropic.max_retries = 2;
CREATE TEMP TABLE e AS SELECT id FROM anthropic.env_create('{"name": "errors"}');

-- Faults answer with retry-after-ms: 1 so retries do not sleep.
CREATE FUNCTION pg_temp.fail(status int, times int DEFAULT 1, method text DEFAULT 'GET', extra jsonb DEFAULT '{}')
RETURNS void LANGUAGE sql AS $$
	SELECT fake.call('DELETE', '/_fake/faults');
	SELECT fake.fault(jsonb_build_object('method', method, 'path_regex', '^/v1/environments',
		'status', status, 'times', times, 'headers', jsonb_build_object('retry-after-ms', '1')) || extra);
	SELECT fake.clear_requests();
$$;

-- 400 -> invalid_parameter_value
SELECT pg_temp.fail(400);
DO $$ BEGIN
	PERFORM anthropic.env_get((SELECT id FROM e));
EXCEPTION WHEN invalid_parameter_value THEN RAISE NOTICE 'invalid_parameter_value: %', SQLERRM;
END $$;
-- 422 -> invalid_parameter_value
SELECT pg_temp.fail(422);
DO $$ BEGIN
	PERFORM anthropic.env_get((SELECT id FROM e));
EXCEPTION WHEN invalid_parameter_value THEN RAISE NOTICE 'invalid_parameter_value: %', SQLERRM;
END $$;
-- 401 -> invalid_authorization_specification (a wrong key, set for this session)
SELECT fake.call('DELETE', '/_fake/faults');
SET anthropic.api_key = 'sk-ant-wrong';
DO $$ BEGIN
	PERFORM anthropic.env_get((SELECT id FROM e));
EXCEPTION WHEN invalid_authorization_specification THEN RAISE NOTICE 'invalid_authorization_specification: %', SQLERRM;
END $$;
RESET anthropic.api_key;
-- 402 and 403 -> insufficient_privilege
SELECT pg_temp.fail(402);
DO $$ BEGIN
	PERFORM anthropic.env_get((SELECT id FROM e));
EXCEPTION WHEN insufficient_privilege THEN RAISE NOTICE 'insufficient_privilege: %', SQLERRM;
END $$;
SELECT pg_temp.fail(403);
DO $$ BEGIN
	PERFORM anthropic.env_get((SELECT id FROM e));
EXCEPTION WHEN insufficient_privilege THEN RAISE NOTICE 'insufficient_privilege: %', SQLERRM;
END $$;
-- 404 -> undefined_object
DO $$ BEGIN
	PERFORM anthropic.env_get('env_does_not_exist');
EXCEPTION WHEN undefined_object THEN RAISE NOTICE 'undefined_object: %', SQLERRM;
END $$;
-- 409 (retried, as the SDKs do) -> object_not_in_prerequisite_state
SELECT pg_temp.fail(409, 3);
DO $$ BEGIN
	PERFORM anthropic.env_get((SELECT id FROM e));
EXCEPTION WHEN object_not_in_prerequisite_state THEN RAISE NOTICE 'object_not_in_prerequisite_state: %', SQLERRM;
END $$;
SELECT fake.request_count() AS attempts;
-- 413 -> program_limit_exceeded
SELECT pg_temp.fail(413);
DO $$ BEGIN
	PERFORM anthropic.env_get((SELECT id FROM e));
EXCEPTION WHEN program_limit_exceeded THEN RAISE NOTICE 'program_limit_exceeded: %', SQLERRM;
END $$;
-- A response over anthropic.max_response_bytes -> program_limit_exceeded
SELECT fake.call('DELETE', '/_fake/faults');
SELECT fake.bulk(50);
SET anthropic.max_response_bytes = '2kB';
DO $$ BEGIN
	PERFORM count(*) FROM anthropic.env_list();
EXCEPTION WHEN program_limit_exceeded THEN RAISE NOTICE 'program_limit_exceeded: %', SQLERRM;
END $$;
RESET anthropic.max_response_bytes;
-- 429 after retries -> configuration_limit_exceeded, after 3 attempts
SELECT pg_temp.fail(429, 3);
DO $$ BEGIN
	PERFORM anthropic.env_get((SELECT id FROM e));
EXCEPTION WHEN configuration_limit_exceeded THEN RAISE NOTICE 'configuration_limit_exceeded: %', SQLERRM;
END $$;
SELECT fake.request_count() AS attempts;
-- 500 and 529 after retries -> system_error
SELECT pg_temp.fail(500, 3);
DO $$ BEGIN
	PERFORM anthropic.env_get((SELECT id FROM e));
EXCEPTION WHEN system_error THEN RAISE NOTICE 'system_error: %', SQLERRM;
END $$;
SELECT fake.request_count() AS attempts;
SELECT pg_temp.fail(529, 3);
DO $$ BEGIN
	PERFORM anthropic.env_get((SELECT id FROM e));
EXCEPTION WHEN system_error THEN RAISE NOTICE 'system_error: %', SQLERRM;
END $$;
-- Two 500s then success: retried and succeeded.
SELECT pg_temp.fail(500, 2);
SELECT name FROM anthropic.env_get((SELECT id FROM e));
SELECT n, status FROM fake.requests();
-- x-should-retry overrides the status: false on a 500, true on a 400.
SELECT pg_temp.fail(500, 3, 'GET', '{"headers": {"x-should-retry": "false", "retry-after-ms": "1"}}');
SELECT fake.try(format('SELECT anthropic.env_get(%L)', id)) FROM e;
SELECT fake.request_count() AS attempts;
SELECT pg_temp.fail(400, 1, 'GET', '{"headers": {"x-should-retry": "true", "retry-after-ms": "1"}}');
SELECT name FROM anthropic.env_get((SELECT id FROM e));
SELECT fake.request_count() AS attempts;
-- A malformed answer -> connection_failure
SELECT pg_temp.fail(200, 1, 'GET', '{"body": "{not json"}');
DO $$ BEGIN
	PERFORM anthropic.env_get((SELECT id FROM e));
EXCEPTION WHEN connection_failure THEN RAISE NOTICE 'connection_failure: %', SQLERRM;
END $$;
-- An answer of the wrong JSON type, and an object without id.
SELECT pg_temp.fail(200, 1, 'GET', '{"body": [1, 2]}');
SELECT fake.try(format('SELECT anthropic.env_get(%L)', id)) FROM e;
SELECT pg_temp.fail(200, 1, 'GET', '{"body": {"name": "no id"}}');
SELECT fake.try(format('SELECT anthropic.env_get(%L)', id)) FROM e;
-- A timeout -> connection_failure
SELECT fake.call('DELETE', '/_fake/faults');
SELECT fake.fault('{"path_regex": "^/v1/environments/", "delay_ms": 1500, "times": 1}');
SET anthropic.timeout_ms = 200;
SET anthropic.max_retries = 0;
DO $$ BEGIN
	PERFORM anthropic.env_get((SELECT id FROM e));
EXCEPTION WHEN connection_failure THEN RAISE NOTICE 'connection_failure: %', SQLERRM;
END $$;
RESET anthropic.timeout_ms;
-- Connection refused -> connection_failure
SET anthropic.base_url = 'http://127.0.0.1:1';
DO $$ BEGIN
	PERFORM anthropic.env_get('env_x');
EXCEPTION WHEN connection_failure THEN RAISE NOTICE 'connection_failure: %', SQLERRM;
END $$;
RESET anthropic.base_url;
RESET anthropic.max_retries;
-- statement_timeout during a request -> query_canceled, and the session goes on.
SELECT fake.fault('{"path_regex": "^/v1/environments/", "delay_ms": 3000, "times": 1}');
SET statement_timeout = '300ms';
DO $$ BEGIN
	PERFORM anthropic.env_get((SELECT id FROM e));
EXCEPTION WHEN query_canceled THEN RAISE NOTICE 'query_canceled: %', SQLERRM;
END $$;
RESET statement_timeout;
SELECT name FROM anthropic.env_get((SELECT id FROM e));

-- env_create is retried only when the server surely did nothing: a 500
-- answered after the environment was made leaves exactly one.
SELECT fake.reset();
SELECT fake.fault('{"method": "POST", "path_regex": "^/v1/environments$", "status": 500, "after": true, "headers": {"retry-after-ms": "1"}}');
SELECT fake.try($$SELECT anthropic.env_create('{"name": "once"}')$$);
SELECT count(*) AS created FROM anthropic.env_list() WHERE name = 'once';
SELECT fake.request_count() - 1 AS create_attempts;
-- ... while 429, 503 and 529 on create are retried.
SELECT fake.clear_requests();
SELECT fake.fault('{"method": "POST", "path_regex": "^/v1/environments$", "status": 503, "times": 2, "headers": {"retry-after-ms": "1"}}');
SELECT name FROM anthropic.env_create('{"name": "retried"}');
SELECT n, method, status FROM fake.requests();

-- Bad arguments are refused before any request is sent.
SELECT fake.clear_requests();
SELECT fake.try($$SELECT anthropic.env_get('')$$);
SELECT fake.try($$SELECT anthropic.env_get('.')$$);
SELECT fake.try($$SELECT anthropic.env_get('..')$$);
SELECT fake.try($$SELECT anthropic.env_get('a/b')$$);
SELECT fake.try($$SELECT anthropic.env_get('x?y')$$);
SELECT fake.try($$SELECT anthropic.env_get('x#y')$$);
SELECT fake.try($$SELECT anthropic.env_get(';x')$$);
SELECT fake.try($$SELECT anthropic.env_get(E'env\nx')$$);
SELECT fake.try($$SELECT anthropic.env_delete(E'env\tx')$$);
SELECT fake.try($$SELECT count(*) FROM anthropic.env_list(page_size => 0)$$);
SELECT fake.try($$SELECT count(*) FROM anthropic.env_list(page_size => 1001)$$);
SELECT fake.try($$SELECT anthropic.env_list_page(page_limit => 0)$$);
SELECT fake.try($$SELECT anthropic.env_create('[]')$$);
SELECT fake.try($$SELECT anthropic.env_create('"name"')$$);
SELECT fake.try($$SELECT anthropic.env_create('null')$$);
SELECT fake.request_count() AS requests_sent;
-- NULL input means no answer.
SELECT anthropic.env_get(NULL) IS NULL AS null_in_null_out;
