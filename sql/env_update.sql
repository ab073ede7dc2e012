--
-- env_update: merge semantics, as the API applies them.
--
SELECT fake.reset();
CREATE TEMP TABLE u AS
SELECT id FROM anthropic.env_create('{"name": "merge", "description": "first", "metadata": {"a": "1", "b": "2"},
	"config": {"type": "cloud", "networking": {"type": "limited", "allowed_hosts": ["x.example.com"]}}}');

-- An omitted field is kept.
SELECT e.name, e.description, e.metadata, e.config->'networking'->'allowed_hosts' AS hosts
FROM u, LATERAL anthropic.env_update(u.id, '{"name": "merge-2"}') e;

-- description: null clears it; a metadata key set to null is removed.
SELECT e.name, e.description, e.metadata
FROM u, LATERAL anthropic.env_update(u.id, '{"description": null, "metadata": {"a": null, "c": "3"}}') e;
SELECT body FROM fake.requests() WHERE method = 'POST' ORDER BY n DESC LIMIT 1;

-- A change of config type is refused with 22023 and the API's error_code.
DO $$
DECLARE
	d text;
BEGIN
	PERFORM anthropic.env_update((SELECT id FROM u), '{"config": {"type": "self_hosted"}}');
	RAISE EXCEPTION 'config type change was accepted';
EXCEPTION WHEN invalid_parameter_value THEN
	GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL;
	RAISE NOTICE 'caught invalid_parameter_value: % | %', SQLERRM, fake.mask(d);
END $$;

-- An archived environment cannot be updated.
SELECT archived_at IS NOT NULL AS archived FROM u, LATERAL anthropic.env_archive(u.id);
SELECT fake.try(format('SELECT anthropic.env_update(%L, %L)', id, '{"name": "too-late"}')) FROM u;
SELECT fake.try(format('SELECT anthropic.env_archive(%L)', id)) FROM u;

-- The patch must be a JSON object; nothing is sent.
SELECT fake.clear_requests();
SELECT fake.try(format('SELECT anthropic.env_update(%L, %L)', id, '[]')) FROM u;
SELECT fake.try(format('SELECT anthropic.env_update(%L, %L)', id, '"x"')) FROM u;
SELECT fake.request_count();
