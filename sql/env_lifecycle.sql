--
-- env_lifecycle: create -> get -> list -> update -> archive -> list ->
-- delete -> get, checking what reached the server at each step.
--
SELECT fake.reset();
CREATE TEMP TABLE ids (name text PRIMARY KEY, id text);

-- A cloud environment with limited networking and all six package managers.
INSERT INTO ids
SELECT name, id FROM anthropic.env_create($${
	"name": "life-cloud",
	"description": "Python environment with data-analysis packages.",
	"metadata": {"team": "data", "cost_center": "42"},
	"config": {
		"type": "cloud",
		"networking": {"type": "limited", "allowed_hosts": ["api.example.com"],
					   "allow_mcp_servers": true, "allow_package_managers": true},
		"packages": {"type": "packages", "apt": ["curl"], "cargo": ["ripgrep"], "gem": ["rails"],
					 "go": ["golang.org/x/tools"], "npm": ["left-pad"], "pip": ["pandas==2.2.0", "numpy"]}
	}
}$$);
INSERT INTO ids
SELECT name, id FROM anthropic.env_create('{"name": "life-self", "config": {"type": "self_hosted"}, "scope": "account"}');

SELECT n, method, path, query, body FROM fake.requests();

-- get: every typed column, and raw as sent.
SELECT fake.clear_requests();
SELECT e.name, e.description, e.config_type, e.config->'networking' AS networking,
       e.config->'packages'->'pip' AS pip, e.metadata, e.scope, e.archived_at,
       e.updated_at = e.created_at AS unchanged, fake.mask(e.raw::text) AS raw
FROM ids, LATERAL anthropic.env_get(ids.id) e WHERE ids.name = 'life-cloud';
SELECT e.name, e.config_type, e.config, e.scope FROM ids, LATERAL anthropic.env_get(ids.id) e
WHERE ids.name = 'life-self';
SELECT n, method, path, query, body FROM fake.requests();

-- list shows both.
SELECT name, config_type FROM anthropic.env_list() ORDER BY name;

-- update: POST with the patch as the body.
SELECT fake.clear_requests();
SELECT e.name, e.description, e.metadata, e.updated_at > e.created_at AS updated
FROM ids, LATERAL anthropic.env_update(ids.id, '{"name": "life-cloud-2", "metadata": {"cost_center": null, "owner": "ops"}}') e
WHERE ids.name = 'life-cloud';
SELECT n, method, path, query, body FROM fake.requests();

-- archive: a body-less POST; the answer has archived_at.
SELECT fake.clear_requests();
SELECT e.name, e.archived_at IS NOT NULL AS archived
FROM ids, LATERAL anthropic.env_archive(ids.id) e WHERE ids.name = 'life-self';
SELECT n, method, path, query, body, headers->>'content-length' AS content_length FROM fake.requests();

-- Archived environments show up only with include_archived.
SELECT name, archived_at IS NOT NULL AS archived FROM anthropic.env_list() ORDER BY name;
SELECT name, archived_at IS NOT NULL AS archived FROM anthropic.env_list(include_archived => true) ORDER BY name;

-- delete, then get with and without missing_ok.
SELECT fake.clear_requests();
SELECT anthropic.env_delete(id) FROM ids WHERE name = 'life-self';
SELECT anthropic.env_delete(id, missing_ok => true) FROM ids WHERE name = 'life-self';
SELECT (anthropic.env_get(id, missing_ok => true)).id IS NULL AS gone FROM ids WHERE name = 'life-self';
SELECT fake.try(format('SELECT anthropic.env_get(%L)', id)) FROM ids WHERE name = 'life-self';
SELECT fake.try(format('SELECT anthropic.env_delete(%L)', id)) FROM ids WHERE name = 'life-self';
SELECT n, method, path, query, body, status FROM fake.requests();

-- Ids are percent-encoded into the path.
SELECT fake.clear_requests();
SELECT anthropic.env_get('env with spaces&more', true) IS NULL AS missing;
SELECT anthropic.env_get('env_ünïcode', true) IS NULL AS missing;
SELECT path FROM fake.requests();
