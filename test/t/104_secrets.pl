# Security: keys are passwords (design.md section 2; README "Security").
# The keys live in postgresql.conf for this node (not in the environment),
# and the fake is started with the same keys, so the conf-file path is the
# one that must work and must not leak.
#   - no non-superuser can read a key through SHOW, current_setting(),
#     pg_settings, pg_file_settings or pg_db_role_setting (nor SHOW ALL);
#   - ALTER ROLE/DATABASE SET (and function SET clauses) of a key are
#     refused with a HINT; non-superusers cannot change the keys, base_url,
#     ca_file or max_response_bytes;
#   - the keys never appear in the server log at debug5 with
#     log_statement = all (across a reload, a key change and errors), in any
#     error message/DETAIL/CONTEXT, or in pg_stat_activity;
#   - EXECUTE is not granted to PUBLIC, a role granted as the README says
#     works, the mirror tables are not readable by PUBLIC;
#   - CR/LF in any header value is refused before sending, and NUL cannot
#     reach an id at all.
use strict;
use warnings;

use FakeApi;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $K1 = $FakeApi::KEY;                           # anthropic.api_key
my $K2 = 'sk-ant-env-secret-key-5f1c0a7e93b2';    # anthropic.environment_key
my $K3 = 'sk-ant-env-rotated-key-8d2e4b6a01c9';   # environment_key after rotation
my $ATTEMPT = 'sk-ant-catalog-attempt-2b7f9d41';  # what ALTER ROLE ... SET tries to store
my @KEYS = ($K1, $K2);

my $fake = FakeApi->start('--environment-key', $K2);
my $node = $fake->new_node('secrets', conf => join('',
	"anthropic.environment_key = '$K2'\n",
	"log_min_messages = debug5\n",
	"log_statement = all\n",
	"log_connections = on\n",
	"log_disconnections = on\n"));
my $conf = slurp_file($node->data_dir . '/postgresql.conf');
like($conf, qr/^anthropic\.api_key = '\Q$K1\E'$/m, 'the API key is set in postgresql.conf');

$node->safe_psql('postgres', q{
CREATE ROLE plain LOGIN;
CREATE ROLE reader LOGIN IN ROLE pg_read_all_settings, pg_read_all_stats;
CREATE ROLE app LOGIN;
GRANT USAGE ON SCHEMA anthropic TO app;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA anthropic TO app;
});

# Runs a psql script as a role with verbose errors; returns stdout.stderr.
sub as_role
{
	my ($role, $sql, %o) = @_;
	my ($rc, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\n$sql",
		extra_params => [ '-U', $role ], on_error_stop => 0, %o);
	return "$out\n$err";
}

sub no_keys
{
	my ($text, $label, @keys) = @_;
	@keys = @KEYS unless @keys;
	my @found = grep { index($text, $_) >= 0 } @keys;
	ok(!@found, $label) or diag "found key(s) in: $text";
}

# -- The keys work: API key (x-api-key) and environment key (Bearer).
my $env = $node->safe_psql('postgres',
	q{SELECT id FROM anthropic.env_create('{"name": "secrets", "config": {"type": "self_hosted"}}')}, extra_params => [ '-U', 'app' ]);
like($env, qr/^env_/, 'app creates an environment with the API key from postgresql.conf');
my $item = $fake->call('POST', "/_fake/environments/$env/work", {})->{id};
is($node->safe_psql('postgres', "SELECT id FROM anthropic.work_poll('$env')", extra_params => [ '-U', 'app' ]),
	$item, 'app polls with the environment key from postgresql.conf');
my ($poll) = grep { $_->{path} =~ m{/work/poll$} } @{ $fake->requests };
is($poll->{headers}{authorization}, "Bearer $K2", 'the poll carried the environment key as Bearer');

# -- Reading the keys.
my $probe = q{
SHOW anthropic.api_key;
SHOW anthropic.environment_key;
SELECT current_setting('anthropic.api_key');
SELECT current_setting('anthropic.environment_key', true);
SHOW ALL;
SELECT name, setting, reset_val, boot_val FROM pg_settings WHERE name LIKE 'anthropic.%';
SELECT 'settings_rows=' || count(*) FROM pg_settings WHERE name IN ('anthropic.api_key', 'anthropic.environment_key');
SELECT * FROM pg_show_all_settings() WHERE name LIKE 'anthropic%';
SELECT name, setting FROM pg_file_settings;
SELECT * FROM pg_show_all_file_settings();
SELECT setdatabase, setrole, setconfig FROM pg_db_role_setting;
SELECT rolname, rolconfig FROM pg_roles WHERE rolconfig IS NOT NULL;
SELECT proname, proconfig FROM pg_proc WHERE proconfig IS NOT NULL;
SELECT pg_settings_get_flags('anthropic.api_key');
SELECT row_to_json(a) FROM pg_stat_activity a;
};
my %seen;
for my $role (qw(plain reader app postgres))
{
	# A superuser may read the configuration file itself (pg_file_settings
	# shows it, as would pg_read_file): everything else applies to it too.
	my $sql = $probe;
	$sql =~ s/^SELECT .*file_settings.*\n//mg if $role eq 'postgres';
	my $out = as_role($role, $sql);
	$seen{$role} = $out;
	no_keys($out, "$role: no key through SHOW, current_setting, pg_settings, pg_file_settings, pg_db_role_setting, pg_stat_activity");
	like($out, qr/settings_rows=0/, "$role: pg_settings has no key rows");
}
like($seen{plain}, qr/(?:must be superuser or have privileges of pg_read_all_settings to examine|permission denied to examine) "anthropic.api_key"/,
	'plain: SHOW of the API key is refused');
like($seen{plain}, qr/(?:must be superuser or have privileges of pg_read_all_settings to examine|permission denied to examine) "anthropic.environment_key"/,
	'plain: current_setting() of the environment key is refused (even with missing_ok)');
like($seen{plain}, qr/permission denied for view pg_file_settings/, 'plain: pg_file_settings is refused');
like($seen{reader}, qr/permission denied for view pg_file_settings/,
	'reader (pg_read_all_settings): pg_file_settings is refused');
like($seen{reader}, qr/permission denied for function pg_show_all_file_settings/,
	'reader: pg_show_all_file_settings() is refused');
like($seen{reader}, qr/^\*{8}\n\*{8}\n\*{8}\n\*{8}$/m, 'reader: SHOW and current_setting() give the mask only');
like($seen{postgres}, qr/^\*{8}\n\*{8}\n\*{8}\n\*{8}$/m, 'a superuser also sees the mask only');
unlike($seen{$_}, qr/^anthropic\.(api|environment)_key\|/m, "$_: SHOW ALL does not list the keys") for qw(reader postgres);

# -- Keys cannot be stored where every role can read them.
for my $stmt (
	"ALTER ROLE app SET anthropic.api_key = '$ATTEMPT'",
	"ALTER ROLE ALL SET anthropic.api_key = '$ATTEMPT'",
	"ALTER ROLE app IN DATABASE postgres SET anthropic.environment_key = '$ATTEMPT'",
	"ALTER DATABASE postgres SET anthropic.environment_key = '$ATTEMPT'",
	"CREATE FUNCTION keyed() RETURNS int LANGUAGE sql SET anthropic.api_key = '$ATTEMPT' AS 'SELECT 1'")
{
	my $out = as_role('postgres', "$stmt;");
	like($out, qr/ERROR:  42501: Anthropic keys cannot be stored.*\n(?:.*\n)*?HINT:  Set the key in postgresql\.conf, with ALTER SYSTEM/,
		"refused with a HINT: $stmt");
}
is($node->safe_psql('postgres',
	q{SELECT (SELECT count(*) FROM pg_db_role_setting WHERE array_to_string(setconfig, ' ') ILIKE '%anthropic%')
	  + (SELECT count(*) FROM pg_proc WHERE array_to_string(proconfig, ' ') ILIKE '%anthropic%')}),
	'0', 'nothing was stored in pg_db_role_setting or pg_proc');

# -- Non-superusers cannot change the keys or where they are sent.
my $url = $fake->url;
for my $role (qw(plain app))
{
	for my $set (
		"SET anthropic.api_key = 'sk-ant-stolen-000000'",
		"SET anthropic.environment_key = 'sk-ant-stolen-000000'",
		"SET anthropic.base_url = 'https://attacker.example'",
		"SET anthropic.ca_file = '/tmp/evil.pem'",
		"SET anthropic.max_response_bytes = '1GB'",
		"BEGIN; SET LOCAL anthropic.base_url = 'http://127.0.0.1:9'; COMMIT",
		"SELECT set_config('anthropic.ca_file', '/tmp/evil.pem', false)",
		"SELECT set_config('anthropic.api_key', 'sk-ant-stolen-000000', true)",
		"ALTER ROLE $role SET anthropic.base_url = 'https://attacker.example'",
		"ALTER ROLE $role SET anthropic.max_response_bytes = '1GB'")
	{
		my $out = as_role($role, "$set;");
		like($out, qr/ERROR:  42501: permission denied to set parameter "anthropic\./,
			"$role cannot: $set");
	}
}
is($node->safe_psql('postgres', "SELECT current_setting('anthropic.base_url')"), $url,
	'base_url is unchanged');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_db_role_setting}), '0',
	'no role setting was stored');

# -- CR, LF (any control character) in a header value is refused before sending.
$fake->clear_requests;
my $inj = q{E'x\r\nX-Injected: 1'};
for my $case (
	[ app => "SET anthropic.beta = $inj", qr/invalid value for parameter "anthropic\.beta".*\n(?:.*\n)*?DETAIL:  HTTP header values cannot contain control characters/ ],
	[ app => q{SET anthropic.beta = E'managed-agents-2026-04-01\n'}, qr/ERROR:  22023: invalid value for parameter "anthropic\.beta"/ ],
	[ app => q{SET anthropic.beta = E'\rmanaged-agents-2026-04-01'}, qr/ERROR:  22023: invalid value for parameter "anthropic\.beta"/ ],
	[ app => "SET anthropic.workspace_id = $inj", qr/ERROR:  22023: invalid value for parameter "anthropic\.workspace_id"/ ],
	[ app => "SET anthropic.api_version = $inj", qr/ERROR:  22023: invalid value for parameter "anthropic\.api_version"/ ],
	[ app => q{SET anthropic.api_version = E'2023-06-01\t'}, qr/ERROR:  22023: invalid value for parameter "anthropic\.api_version"/ ],
	[ app => "SELECT set_config('anthropic.workspace_id', $inj, false)", qr/ERROR:  22023: invalid value for parameter "anthropic\.workspace_id"/ ],
	[ app => "ALTER ROLE app SET anthropic.beta = $inj", qr/ERROR:  22023: invalid value for parameter "anthropic\.beta"/ ],
	[ app => "SELECT * FROM anthropic.work_poll('$env', block_ms => 1, worker_id => $inj)", qr/ERROR:  22023: invalid worker_id/ ],
	[ app => qq{SELECT * FROM anthropic.work_poll('$env', block_ms => 1, worker_id => E'worker\\n')}, qr/ERROR:  22023: invalid worker_id/ ],
	[ app => "SELECT anthropic.work_ack('$env', $inj)", qr/ERROR:  22023: invalid work_id/ ],
	[ app => "SELECT anthropic.work_stats($inj)", qr/ERROR:  22023: invalid environment_id/ ],
	[ postgres => "SET anthropic.api_key = $inj", qr/ERROR:  22023: Anthropic keys cannot contain control characters/ ],
	[ postgres => "SET anthropic.environment_key = E'sk-ant-abc\\r'", qr/ERROR:  22023: Anthropic keys cannot contain control characters/ ],
	[ postgres => "SET anthropic.base_url = E'http://127.0.0.1:1/\\r\\nX-Injected: 1'", qr/ERROR:  22023: invalid value for parameter "anthropic\.base_url"/ ],
	[ postgres => "ALTER SYSTEM SET anthropic.workspace_id = $inj", qr/ERROR:  22023: invalid value for parameter "anthropic\.workspace_id"/ ])
{
	my ($role, $sql, $re) = @$case;
	my $out = as_role($role, "$sql;");
	like($out, $re, "refused: $sql");
}
is(scalar @{ $fake->requests }, 0, 'none of those sent a request');

# Values that go into the path, the query string or the body are encoded.
$fake->clear_requests;
my $out = as_role('app', qq{
SELECT anthropic.work_ack('$env', '$item');
SELECT anthropic.work_heartbeat('$env', '$item', expected_last_heartbeat => $inj);
SELECT anthropic.env_list_page(page => $inj);
SELECT anthropic.work_update('$env', '$item', jsonb_build_object('note', ${inj}::text));
});
my @reqs = @{ $fake->requests };
ok(!(grep { exists $_->{headers}{'x-injected'} } @reqs), 'no request carried an injected header');
my ($hb) = grep { $_->{path} =~ m{/heartbeat$} } @reqs;
is($hb->{params}{expected_last_heartbeat}, "x\r\nX-Injected: 1", 'a CR/LF in expected_last_heartbeat travels percent-encoded in the query');
like($hb->{query}, qr/expected_last_heartbeat=x%0D%0AX-Injected%3A%201/, 'as %0D%0A');
my ($upd) = grep { $_->{method} eq 'POST' && $_->{path} =~ m{/work/\Q$item\E$} } @reqs;
is(eval { decode_json($upd->{body} // "null")->{metadata}{note} }, "x\r\nX-Injected: 1", 'and JSON-escaped in a body');

# NUL cannot reach an id: text cannot hold it, PostgreSQL refuses it first.
$fake->clear_requests;
for my $case (
	[ q{SELECT anthropic.env_get(E'env\x00x')}, qr/ERROR:  22021: invalid byte sequence for encoding "UTF8": 0x00/ ],
	[ q{SELECT anthropic.env_get(convert_from('\x656e7600'::bytea, 'UTF8'))}, qr/ERROR:  22021: invalid byte sequence for encoding "UTF8": 0x00/ ],
	[ q{SELECT anthropic.env_get('env' || chr(0))}, qr/ERROR:  54000: null character not permitted/ ],
	[ q{SELECT anthropic.env_get(E'env\u0000')}, qr/ERROR:  42601: invalid Unicode escape value/ ],
	[ q{SELECT anthropic.env_get('{"id": "env\u0000x"}'::jsonb ->> 'id')}, qr/ERROR:  22P05: unsupported Unicode escape sequence/ ],
	[ q{SELECT anthropic.env_create('{"name": "a\u0000b"}')}, qr/ERROR:  22P05: unsupported Unicode escape sequence/ ])
{
	my ($sql, $re) = @$case;
	like(as_role('app', "$sql;"), $re, "NUL refused by PostgreSQL: $sql");
}
is(scalar @{ $fake->requests }, 0, 'no NUL ever reached a request');

# -- Errors never carry a key: 401, 404, 500, transport, malformed, 412,
# timeout, and a server that echoes the key back in its error.
my $item2 = $fake->call('POST', "/_fake/environments/$env/work", {})->{id};
my @err_cases = (
	[ '401', { status => 401 }, "SELECT anthropic.env_get('$env')", '28000' ],
	[ '404', undef, q{SELECT anthropic.env_get('env_missing')}, '42704' ],
	[ '500', { status => 500, times => -1, headers => { 'retry-after-ms' => '1' } }, "SELECT anthropic.env_get('$env')", '58000' ],
	[ 'transport', { close => JSON::PP::true, times => -1 }, "SET anthropic.max_retries = 0; SELECT anthropic.env_get('$env')", '08006' ],
	[ 'malformed', { status => 200, body => '{"id": ' }, "SELECT anthropic.env_get('$env')", '08006' ],
	[ 'timeout', { delay_ms => 1500 }, "SET anthropic.max_retries = 0; SET anthropic.timeout_ms = 200; SELECT anthropic.env_get('$env')", '08006' ],
	[ '412', undef, "SELECT anthropic.work_heartbeat('$env', '$item', expected_last_heartbeat => 'stale')", '40001' ],
	[ 'refused', undef, "SET anthropic.max_retries = 0; SELECT anthropic.env_get('$env')", '08006', 1 ],
	[ 'echoing server', { status => 401, headers => { 'request-id' => $K1 }, body => encode_json({
		type => 'error', error => { type => 'authentication_error',
			message => "invalid x-api-key $K1 (bearer $K2)", details => { error_code => $K2 } },
		request_id => $K1 }) }, "SELECT anthropic.work_ack('$env', '$item2')", '28000' ],
);
my $all_errors = '';
for my $c (@err_cases)
{
	my ($name, $fault, $sql, $state, $refused) = @$c;
	$fake->clear_faults;
	$fake->fault({ path_regex => '^/v1/', %$fault }) if $fault;
	my $text;
	if ($refused)
	{
		# base_url is superuser-only: the superuser's session sees the same texts.
		$text = as_role('postgres', "SET anthropic.base_url = 'http://127.0.0.1:1'; $sql;");
	}
	else
	{
		$text = as_role('app', "$sql;");
	}
	like($text, qr/ERROR:  $state: /, "$name: fails with $state");
	like($text, qr/CONTEXT:  Anthropic API request /, "$name: with a CONTEXT");
	no_keys($text, "$name: no key in the message, DETAIL or CONTEXT");
	$all_errors .= $text;
}
$fake->clear_faults;
like($all_errors, qr/invalid x-api-key \*{8} \(bearer \*{8}\)/, 'an echoed key is masked in the error message');

# -- pg_stat_activity during a call, as seen by a pg_read_all_stats member.
$fake->fault({ path_regex => '^/v1/environments/env_', delay_ms => 3000 });
my $bg = $node->background_psql('postgres', extra_params => [ '-U', 'app' ]);
$bg->query_until(qr/go/, "\\echo go\nSELECT anthropic.env_get('$env');\n");
my $busy = '';
for (1 .. 100)
{
	$busy = $node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND wait_event_type = 'Extension'});
	last if $busy eq '1';
	usleep(30_000);
}
is($busy, '1', 'app is in the middle of a call');
for my $role (qw(reader postgres))
{
	no_keys(as_role($role, 'SELECT row_to_json(a) FROM pg_stat_activity a;'),
		"$role: no key in pg_stat_activity during a call");
}
$bg->quit;
$fake->clear_faults;

# The README's own advice: ALTER SYSTEM SET anthropic.api_key = '...'.  The
# superuser's session keeps that text as its last query; a monitoring role
# (pg_read_all_stats, not a superuser) must not read the key from there.
my $admin = $node->background_psql('postgres');
$admin->query_safe("ALTER SYSTEM SET anthropic.api_key = '$K1'");
no_keys(as_role('reader', 'SELECT query FROM pg_stat_activity;'),
	'after ALTER SYSTEM SET anthropic.api_key, a pg_read_all_stats member sees no key in pg_stat_activity', $K1);
$admin->query_safe('ALTER SYSTEM RESET anthropic.api_key');
$admin->quit;

# -- The log: a reload with an unrelated change, keys typed into SQL in the
# forms PostgreSQL accepts, then a key rotated in postgresql.conf.
my @typed = map { "sk-ant-typed-$_-4c8e1f2a" } 1 .. 7;
my $pos = -s $node->logfile;
$node->append_conf('postgresql.conf', "work_mem = '5MB'\n");
$node->reload;
my $wm = '';
for (1 .. 50)
{
	$wm = $node->safe_psql('postgres', 'SHOW work_mem');
	last if $wm eq '5MB';
	usleep(100_000);
}
is($wm, '5MB', 'the unrelated change was reloaded');
for my $stmt (
	"SET anthropic.api_key = '$typed[0]'",
	"SET ANTHROPIC.API_KEY = '$typed[1]'",
	"SET anthropic.api_key = \$\$$typed[2]\$\$",
	"SET \"anthropic\".\"api_key\" = '$typed[3]'",
	"SET anthropic . environment_key = '$typed[4]'",
	"PREPARE setkey(text) AS SELECT set_config('anthropic.api_key', \$1, false); EXECUTE setkey('$typed[5]')",
	"SET anthropic.Api_Key = '$typed[6]'; SELECT 1/0")
{
	$node->psql('postgres', $stmt);
}
# A key rotated in postgresql.conf: PostgreSQL logs "parameter ... changed to".
$node->append_conf('postgresql.conf', "anthropic.environment_key = '$K3'\n");
$node->reload;
my $rotated = 0;
for (1 .. 50)
{
	$rotated = slurp_file($node->logfile) =~ /parameter "anthropic\.environment_key" changed to/;
	last if $rotated;
	usleep(100_000);
}
ok($rotated, 'the reload of the rotated key was logged by PostgreSQL');
$node->safe_psql('postgres', 'SELECT 1');    # a backend processes the reload too

# -- Privileges.
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM pg_proc
	WHERE pronamespace = 'anthropic'::regnamespace
	  AND (proacl IS NULL
	       OR EXISTS (SELECT 1 FROM aclexplode(proacl) a WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'))}),
	'0', 'no function in schema anthropic is executable by PUBLIC');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM pg_proc WHERE pronamespace = 'anthropic'::regnamespace
	  AND has_function_privilege('plain', oid, 'EXECUTE')}),
	'0', 'plain can execute none of them');
like(as_role('plain', "SELECT anthropic.env_get('$env');"), qr/ERROR:  42501: permission denied for schema anthropic/,
	'plain cannot call env_get');
my $tables = $node->safe_psql('postgres', q{
	SELECT string_agg(c.oid::regclass::text, ' ' ORDER BY c.relname) FROM pg_class c
	WHERE c.relnamespace = 'anthropic'::regnamespace AND c.relkind IN ('r', 'p')});
like($tables, qr/anthropic\.environments/, "the mirror tables: $tables");
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM pg_class c
	WHERE c.relnamespace = 'anthropic'::regnamespace AND c.relkind IN ('r', 'p')
	  AND (EXISTS (SELECT 1 FROM aclexplode(c.relacl) a WHERE a.grantee = 0)
	       OR has_table_privilege('plain', c.oid, 'SELECT')
	       OR has_table_privilege('app', c.oid, 'SELECT'))}),
	'0', 'no mirror table is readable by PUBLIC, plain or app');
like(as_role('app', 'SELECT count(*) FROM anthropic.environments;'),
	qr/ERROR:  42501: permission denied for table environments/, 'app (EXECUTE granted) cannot read the mirror');
like($node->safe_psql('postgres', "SELECT name FROM anthropic.env_get('$env')", extra_params => [ '-U', 'app' ]),
	qr/^secrets$/, 'a role granted as the README says works');
my $views = $node->safe_psql('postgres', q{
	SELECT string_agg(c.relname || '=' || coalesce(c.relacl::text, 'default'), ' ') FROM pg_class c
	WHERE c.relnamespace = 'anthropic'::regnamespace AND c.relkind = 'v'});
note "views in schema anthropic and their ACLs: $views";

$node->stop;
my $log = slurp_file($node->logfile);
my $tail = substr($log, $pos);
like($tail, qr/parameter "work_mem" changed to "5MB"/, 'the reload was logged');
like($tail, qr/parameter "anthropic\.environment_key" changed to "\*{8}"/,
	'the rotated key is masked in PostgreSQL\'s "changed to" line');
like($tail, qr/statement: SET anthropic\.api_key = '\*{8}'/, 'a typed SET is logged with its value masked');
like($tail, qr/statement: SET anthropic\.api_key = \$\$\*{8}\$\$/, 'a dollar-quoted value too');
for my $k (@KEYS, $K3, $ATTEMPT)
{
	unlike($log, qr/\Q$k\E/, "the server log (debug5, log_statement = all) never holds $k");
}
my @forms = ('SET name = \'...\'', 'SET in upper case', 'SET with a dollar-quoted value',
	'SET "anthropic"."api_key"', 'SET with spaces around the dot', 'a prepared set_config()',
	'SET in mixed case, then an error');
for my $i (0 .. $#typed)
{
	my @lines = grep { index($_, $typed[$i]) >= 0 } split /\n/, $log;
	ok(!@lines, "a key typed as $forms[$i] is not in the log") or diag join("\n", @lines);
}

done_testing();
