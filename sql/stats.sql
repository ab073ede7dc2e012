--
-- stats: anthropic.request_stats over a known mix of calls.
--
SELECT fake.reset();
SELECT anthropic.request_stats_reset();
SET anthropic.max_retries = 2;

SELECT count(*) FROM (SELECT anthropic.env_create(jsonb_build_object('name', 'stats-' || g)) FROM generate_series(1, 3) g) s;
SELECT count(*) FROM anthropic.env_list() e, LATERAL anthropic.env_get(e.id) g;
SELECT anthropic.env_get('env_missing', missing_ok => true) IS NULL AS missing;
-- one env_get retried once, then successful
SELECT fake.fault('{"method": "GET", "path_regex": "^/v1/environments/env_", "status": 500, "times": 1, "headers": {"retry-after-ms": "1"}}');
SELECT count(*) FROM (SELECT anthropic.env_get(id) FROM anthropic.env_list() LIMIT 1) s;
-- one env_get failing after two retries
SELECT fake.fault('{"method": "GET", "path_regex": "^/v1/environments/env_", "status": 503, "times": 3, "headers": {"retry-after-ms": "1"}}');
SELECT fake.try(format('SELECT anthropic.env_get(%L)', id)) FROM anthropic.env_list() LIMIT 1;
-- one transport failure, no retry
SET anthropic.max_retries = 0;
SET anthropic.base_url = 'http://127.0.0.1:1';
SELECT split_part(fake.try($$SELECT anthropic.env_get('env_nowhere')$$), ' | ', 1);
RESET anthropic.base_url;
RESET anthropic.max_retries;

SELECT endpoint, calls, errors_4xx, errors_5xx, errors_transport, retries,
       bytes_sent > 0 AS sent, bytes_received > 0 AS received,
       total_ms >= max_ms AND max_ms >= mean_ms AS times_consistent,
       last_error_at IS NOT NULL AS has_error_time, last_request_id LIKE 'req_%' AS has_request_id
FROM anthropic.request_stats WHERE calls > 0 ORDER BY endpoint;
SELECT count(*) AS endpoints FROM anthropic.request_stats;

-- Reset zeroes everything.
SELECT anthropic.request_stats_reset();
SELECT sum(calls) AS calls, sum(retries) AS retries FROM anthropic.request_stats;

-- Tracking can be turned off.
SET anthropic.track_requests = off;
SELECT count(*) FROM anthropic.env_list();
SELECT sum(calls) FROM anthropic.request_stats;
RESET anthropic.track_requests;

-- Only superusers and granted roles read or reset the statistics.
CREATE ROLE ae_stats_user;
SET ROLE ae_stats_user;
SELECT fake.try('SELECT anthropic.request_stats_reset()');
SELECT fake.try('SELECT count(*) FROM anthropic.request_stats');
RESET ROLE;
GRANT USAGE ON SCHEMA anthropic TO ae_stats_user;
GRANT EXECUTE ON FUNCTION anthropic.request_stats_reset(), anthropic._request_stats() TO ae_stats_user;
GRANT SELECT ON anthropic.request_stats TO ae_stats_user;
SET ROLE ae_stats_user;
SELECT fake.try('SELECT anthropic.request_stats_reset()');
SELECT count(*) FROM anthropic.request_stats;
RESET ROLE;
DROP OWNED BY ae_stats_user;
DROP ROLE ae_stats_user;
