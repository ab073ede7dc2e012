--
-- security: privileges and key hiding (design.md section 2).
--
SELECT fake.reset();
CREATE ROLE ae_plain LOGIN;
CREATE ROLE ae_reader LOGIN IN ROLE pg_read_all_settings;
CREATE ROLE ae_app LOGIN;

-- An environment key set by the superuser in this session.
SET anthropic.environment_key = 'env-key-for-this-session';
SHOW anthropic.environment_key;

-- A plain role can neither read nor set the keys or the base URL.
SET ROLE ae_plain;
SELECT fake.try('SHOW anthropic.api_key');
SELECT fake.try('SHOW anthropic.environment_key');
SELECT fake.try($$SELECT current_setting('anthropic.environment_key')$$);
SELECT fake.try($$SELECT current_setting('anthropic.base_url')$$);
SELECT count(*) AS visible_key_rows FROM pg_settings WHERE name IN ('anthropic.api_key', 'anthropic.environment_key');
SELECT fake.try($$SET anthropic.api_key = 'stolen'$$);
SELECT fake.try($$SET anthropic.base_url = 'https://attacker.example'$$);
SELECT fake.try($$SET anthropic.ca_file = '/tmp/evil.pem'$$);
SELECT fake.try($$SET anthropic.max_response_bytes = '1GB'$$);
-- EXECUTE is not granted to PUBLIC.
SELECT fake.try($$SELECT anthropic.env_get('env_x')$$);
RESET ROLE;

-- Members of pg_read_all_settings see only a mask.
SET ROLE ae_reader;
SHOW anthropic.environment_key;
SHOW anthropic.api_key;
RESET ROLE;
RESET anthropic.environment_key;

-- A role granted the documented privileges can call the functions.
GRANT USAGE ON SCHEMA anthropic TO ae_app;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA anthropic TO ae_app;
SET ROLE ae_app;
SELECT count(*) FROM anthropic.env_list();
SELECT anthropic.env_get('env_missing', missing_ok => true) IS NULL AS missing;
RESET ROLE;

-- Keys cannot be stored where every role can read them.
SELECT fake.try($$ALTER ROLE ae_app SET anthropic.api_key = 'sk-ant-in-catalog'$$);
SELECT fake.try($$ALTER DATABASE contrib_regression SET anthropic.environment_key = 'in-catalog'$$);
ALTER ROLE ae_app SET anthropic.api_key = 'sk-ant-in-catalog';
SELECT count(*) AS stored FROM pg_db_role_setting WHERE array_to_string(setconfig, ',') LIKE '%anthropic%';

-- base_url: https anywhere, plain http only to loopback.  Refused values
-- fail at SET, so no request can ever go to them.
SELECT fake.try($$SET anthropic.base_url = 'http://example.com'$$);
SELECT fake.try($$SET anthropic.base_url = 'http://127.0.0.1.example.com'$$);
SELECT fake.try($$SET anthropic.base_url = 'http://user@127.0.0.1:9'$$);
SELECT fake.try($$SET anthropic.base_url = 'ftp://127.0.0.1'$$);
SELECT fake.try($$SET anthropic.base_url = 'http://10.0.0.1'$$);
SELECT fake.try($$SET anthropic.base_url = 'https://api.anthropic.com/?x=1'$$);
SELECT fake.try($$SET anthropic.base_url = 'http://localhost:9'$$);
SELECT fake.try($$SET anthropic.base_url = 'http://127.1.2.3:9'$$);
SELECT fake.try($$SET anthropic.base_url = 'http://[::1]:9'$$);
SELECT fake.try($$SET anthropic.base_url = 'https://example.com'$$);
RESET anthropic.base_url;
SELECT fake.request_count() AS requests;

DROP OWNED BY ae_app;
DROP ROLE ae_plain, ae_reader, ae_app;
