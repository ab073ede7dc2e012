--
-- many: env_get_many fetches concurrently, in input order, skipping
-- missing ids.
--
SELECT fake.reset();
SELECT fake.bulk(3, '{"name_prefix": "many-"}');
CREATE TEMP TABLE m AS SELECT row_number() OVER (ORDER BY name) AS k, id, name FROM anthropic.env_list();
SELECT k, name FROM m ORDER BY k;

SELECT fake.clear_requests();
SELECT g.name
FROM anthropic.env_get_many(ARRAY[(SELECT id FROM m WHERE k = 3), 'env_missing_1',
	(SELECT id FROM m WHERE k = 1), NULL, 'env_missing_2',
	(SELECT id FROM m WHERE k = 2)], concurrency => 2) g;
SELECT count(*) AS requests, count(*) FILTER (WHERE status = 404) AS not_found FROM fake.requests();

-- Many ids, few connections: concurrency bounds what is in flight.
SELECT fake.bulk(60);
SELECT count(*) FROM anthropic.env_get_many(ARRAY(SELECT id FROM anthropic.env_list()), 4);

-- An error other than 404 raises, after the batch is stopped.
SELECT fake.fault('{"method": "GET", "path_regex": "^/v1/environments/env_", "status": 500, "times": -1, "headers": {"retry-after-ms": "1"}}');
SELECT fake.try($$SELECT count(*) FROM anthropic.env_get_many(ARRAY(SELECT id FROM m), 2)$$);
SELECT fake.call('DELETE', '/_fake/faults');
SELECT count(*) FROM anthropic.env_get_many(ARRAY(SELECT id FROM m));

-- Arguments are checked before anything is sent.
SELECT fake.clear_requests();
SELECT fake.try($$SELECT count(*) FROM anthropic.env_get_many(ARRAY['env_a', 'a/b'])$$);
SELECT fake.try($$SELECT count(*) FROM anthropic.env_get_many(ARRAY['env_a'], 0)$$);
SELECT fake.try($$SELECT count(*) FROM anthropic.env_get_many(ARRAY['env_a'], 65)$$);
SELECT fake.try($$SELECT count(*) FROM anthropic.env_get_many(ARRAY[['env_a'], ['env_b']])$$);
SELECT count(*) FROM anthropic.env_get_many('{}');
SELECT fake.request_count() AS requests_sent;
