--
-- env_basic: the whole stack end to end, and the headers every request
-- carries (wire-notes.md "Requests").
--
SELECT fake.reset();

-- Two environments, one of each config type.
SELECT name, config_type, scope, description, metadata, archived_at IS NULL AS active,
       created_at IS NOT NULL AS has_created_at, raw->>'type' AS raw_type
FROM anthropic.env_create('{"name": "basic-cloud", "config": {"type": "cloud"}, "metadata": {"team": "data"}}');
SELECT name, config_type, config, scope
FROM anthropic.env_create('{"name": "basic-self", "config": {"type": "self_hosted"}, "scope": "account"}');

-- get by id round-trips every column.
SELECT g.name, g.config_type, g.config = e.config AS same_config, g.created_at = e.created_at AS same_time,
       g.raw = e.raw AS same_raw
FROM anthropic.env_list() e, LATERAL anthropic.env_get(e.id) g
ORDER BY g.name;

-- Headers: a GET carries the key, version and beta, and no content type.
SELECT fake.clear_requests();
SELECT count(*) FROM anthropic.env_list();
SELECT method, path, query,
       headers ? 'x-api-key' AS has_key, headers ? 'authorization' AS has_bearer,
       headers->>'anthropic-version' AS version, headers->>'anthropic-beta' AS beta,
       headers->>'accept' AS accept, headers ? 'content-type' AS has_content_type,
       headers ? 'anthropic-workspace-id' AS has_workspace
FROM fake.requests();

-- A POST with a body sends application/json; a body-less POST sends
-- content-length 0 and no content type.
SELECT fake.clear_requests();
SELECT name FROM anthropic.env_create('{"name": "basic-post"}');
SELECT name, archived_at IS NOT NULL AS archived
FROM anthropic.env_archive((SELECT id FROM anthropic.env_list() WHERE name = 'basic-post'));
SELECT method, path, headers->>'content-type' AS content_type,
       headers->>'content-length' AS content_length, headers ? 'expect' AS has_expect, body
FROM fake.requests() WHERE method = 'POST';

-- Extra betas go first, comma-joined; the workspace header appears when set.
SELECT fake.clear_requests();
SET anthropic.beta = 'foo-2025-01-01,managed-agents-2026-04-01';
SET anthropic.workspace_id = 'wrkspc_01abc';
SET anthropic.api_version = '2023-06-01';
SELECT count(*) FROM anthropic.env_list();
RESET anthropic.beta;
RESET anthropic.workspace_id;
SELECT count(*) FROM anthropic.env_list();
SELECT n, headers->>'anthropic-beta' AS beta, headers->>'anthropic-workspace-id' AS workspace
FROM fake.requests();

-- Header values with CR or LF are refused when set.
SET anthropic.beta = E'x\r\nx-evil: 1';
SET anthropic.workspace_id = E'w\n';
SET anthropic.api_version = E'2023-06-01\r\n';

-- The key is hidden even from superusers.
SHOW anthropic.api_key;
