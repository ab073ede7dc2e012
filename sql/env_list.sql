--
-- env_list: lazy pagination and raw pages.
--
SELECT fake.reset();
SELECT fake.bulk(250);

-- LIMIT 5 over 250 environments sends exactly one request.
SELECT fake.clear_requests();
SELECT count(*) FROM (SELECT * FROM anthropic.env_list() LIMIT 5) s;
SELECT n, method, path, query FROM fake.requests();

-- The full list follows next_page lazily until it ends.
SELECT fake.clear_requests();
SELECT count(*), count(DISTINCT id) FROM anthropic.env_list(page_size => 100);
SELECT n, query FROM fake.requests();

-- 2,500 environments with page_size 100 take exactly 25 requests.
SELECT fake.reset();
SELECT fake.bulk(2500);
SELECT fake.clear_requests();
SELECT count(*), count(DISTINCT id) FROM anthropic.env_list(page_size => 100);
SELECT fake.request_count();

-- Archived environments are listed only on request.
SELECT fake.reset();
SELECT fake.bulk(5, '{"archived": 1}');
SELECT count(*) AS active FROM anthropic.env_list();
SELECT count(*) AS all_envs, count(archived_at) AS archived FROM anthropic.env_list(include_archived => true);

-- One raw page at a time.
SELECT fake.clear_requests();
SELECT jsonb_array_length(p->'data') AS items, p->>'next_page' IS NOT NULL AS has_next
FROM anthropic.env_list_page(page_limit => 2) p;
SELECT jsonb_array_length(p->'data') AS items, p->'next_page' AS next_page
FROM anthropic.env_list_page(2, anthropic.env_list_page(page_limit => 2)->>'next_page') p;
SELECT jsonb_array_length(anthropic.env_list_page(include_archived => true)->'data');
SELECT n, query FROM fake.requests();

-- A LATERAL join over ids that may be gone keeps working with missing_ok.
SELECT ids.id, e.name IS NOT NULL AS found
FROM (VALUES ('env_gone_1'), ('env_gone_2')) AS ids(id)
LEFT JOIN LATERAL anthropic.env_get(ids.id, missing_ok => true) e ON true
ORDER BY ids.id;
