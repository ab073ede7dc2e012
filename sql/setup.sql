--
-- setup: the extension, and helpers that drive the fake API's /_fake/
-- control endpoints from SQL (curl through COPY FROM PROGRAM; the fake
-- answers each control call with one line of JSON).
--
CREATE EXTENSION anthropic_env;
CREATE SCHEMA fake;
GRANT USAGE ON SCHEMA fake TO PUBLIC;

CREATE FUNCTION fake.sh_quote(s text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT '''' || replace(s, '''', '''"''"''') || '''' $$;

CREATE FUNCTION fake.call(method text, path text, body jsonb DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
	cmd text := 'curl -sS --max-time 60 -X ' || method || ' '
		|| fake.sh_quote(current_setting('anthropic.base_url') || path);
	out text;
BEGIN
	IF body IS NOT NULL THEN
		cmd := cmd || ' -H ''content-type: application/json'' --data-binary '
			|| fake.sh_quote(body::text);
	END IF;
	IF to_regclass('pg_temp.fake_out') IS NULL THEN
		CREATE TEMP TABLE fake_out (line text);
	END IF;
	TRUNCATE fake_out;
	EXECUTE format('COPY fake_out FROM PROGRAM %L WITH (FORMAT csv, DELIMITER E''\x01'', QUOTE E''\x02'')', cmd);
	SELECT string_agg(line, E'\n') INTO out FROM fake_out;
	RETURN out::jsonb;
END $$;

CREATE FUNCTION fake.reset() RETURNS void
LANGUAGE sql AS $$ SELECT fake.call('POST', '/_fake/reset'); SELECT $$;

CREATE FUNCTION fake.clear_requests() RETURNS void
LANGUAGE sql AS $$ SELECT fake.call('DELETE', '/_fake/requests'); SELECT $$;

CREATE FUNCTION fake.fault(rule jsonb) RETURNS void
LANGUAGE sql AS $$ SELECT fake.call('POST', '/_fake/faults', rule); SELECT $$;

CREATE FUNCTION fake.bulk(n integer, extra jsonb DEFAULT '{}') RETURNS void
LANGUAGE sql AS $$ SELECT fake.call('POST', '/_fake/environments/bulk', jsonb_build_object('count', n) || extra); SELECT $$;

CREATE FUNCTION fake.enqueue(environment_id text, body jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE sql AS $$ SELECT fake.call('POST', '/_fake/environments/' || environment_id || '/work', body) $$;

-- Ids, cursors and timestamps change from run to run: mask them.
CREATE FUNCTION fake.mask(s text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
	SELECT regexp_replace(regexp_replace(regexp_replace(s,
		'(env|work|sesn|req|wrkspc)_[A-Za-z0-9]{20,}', '\1_X', 'g'),
		'page_[A-Za-z0-9+/=%]{12,}', 'page_X', 'g'),
		'\d{4}-\d\d-\d\d[T ]\d\d(:|%3A)\d\d(:|%3A)\d\d(\.\d+)?(Z|[+-]\d\d(:\d\d)?)?', 'TIMESTAMP', 'g')
$$;

-- The request log, with what varies masked.  Headers that every request
-- carries are checked once in env_basic; the key is never spelled out in
-- SQL (it would reach the statement log).
CREATE FUNCTION fake.requests(
	OUT n bigint, OUT method text, OUT path text, OUT query text, OUT body text,
	OUT status integer, OUT headers jsonb)
RETURNS SETOF record
LANGUAGE sql AS $$
	SELECT ord, r->>'method', fake.mask(r->>'path'), fake.mask(r->>'query'),
		   fake.mask((r->>'body')::jsonb::text), (r->>'status')::int, r->'headers'
	FROM jsonb_array_elements(fake.call('GET', '/_fake/requests')->'data') WITH ORDINALITY AS t(r, ord)
	ORDER BY ord
$$;

CREATE FUNCTION fake.request_count() RETURNS bigint
LANGUAGE sql AS $$ SELECT jsonb_array_length(fake.call('GET', '/_fake/requests')->'data') $$;

-- Runs a statement; reports "ok", or the error's SQLSTATE, message, DETAIL
-- and the API CONTEXT line, masked.
CREATE FUNCTION fake.try(q text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	st text;
	msg text;
	det text;
	ctx text;
BEGIN
	EXECUTE q;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
		det = PG_EXCEPTION_DETAIL, ctx = PG_EXCEPTION_CONTEXT;
	ctx := substring(ctx from 'Anthropic API request [^\n]*');
	RETURN st || ': ' || fake.mask(msg)
		|| coalesce(' | ' || fake.mask(nullif(det, '')), '')
		|| coalesce(' | ' || fake.mask(ctx), '');
END $$;

SELECT fake.reset();
SELECT fake.call('GET', '/_fake/health');
