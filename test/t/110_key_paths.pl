# Keys never leak, whatever the path (README "Security").  Every path runs
# with three keys: two that do not look like Anthropic keys (one with a
# quote, a tilde and a dot in it) and one that does, so that masking by
# value is what is tested, not the "sk-ant-" shape.  Each check reads the
# text a pg_read_all_stats member, the client or the server log received:
#   - the log at debug5 with log_statement = all and
#     log_min_error_statement = debug5, in English and in German;
#   - the client's messages (also with log_min_messages = fatal, where
#     PostgreSQL does not call the log hook);
#   - pg_stat_activity during and after SET, SET LOCAL, set_config() in a
#     query, a DO block, a function, ALTER SYSTEM and a syntax error;
#   - pg_stat_statements with pg_stat_statements listed first; listed
#     second, the startup WARNING and its HINT;
#   - sync_runs.error and sync_status.last_error when the API echoes a key;
#   - (111_key_review.pl adds what an independent review found, and the
#     cost of the checks on multi-statement strings);
#   - pg_db_role_setting: a key stored before preloading is reported at
#     startup by role and database with its RESET, never its value;
#   - without shared_preload_libraries: CREATE EXTENSION warns and no
#     request is sent.
use strict;
use warnings;

use FakeApi;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my %KEYS = (
	live => 'ek_live_4f9b2c7d1e8a6035',
	odd => "Qm9v'Lx~Z3r-8p.y7Ws",
	ant => 'sk-ant-api03-path-6c1d9e2f7a55',
);
my @ALL = values %KEYS;

sub sql_quote { my $v = shift; $v =~ s/'/''/g; return "'$v'"; }

# libpq prints "LINE n:" and a caret from its own copy of the query: that
# is the client's text, not something the server sent.
sub server_sent { return join "\n", grep { !/^(?:LINE \d+:|\s*\^|ZEILE \d+:)/ } split /\n/, shift; }

sub no_keys
{
	my ($text, $label, @keys) = @_;
	@keys = @ALL unless @keys;
	my @found = grep { index($text, $_) >= 0 } @keys;
	# A key with a quote may also show in its SQL spelling.
	push @found, grep { my $q = $_; $q =~ s/'/''/g; $q ne $_ && index($text, $q) >= 0 } @keys;
	ok(!@found, $label) or diag "found key(s) in:\n$text";
}

my $fake = FakeApi->start;

my $logconf = join('',
	"log_min_messages = debug5\n",
	"log_statement = all\n",
	"log_min_error_statement = debug5\n");

# The statements a superuser might use to set a key, for key $k.  Each
# leaves the session usable.
sub key_statements
{
	my ($k) = @_;
	my $q = sql_quote($k);
	my $ident = $k =~ /^[a-z_][a-z0-9_]*$/;
	return (
		[ 'SET', "SET anthropic.environment_key = $q;" ],
		[ 'SET LOCAL', "BEGIN; SET LOCAL anthropic.environment_key = $q; COMMIT;" ],
		[ 'SET with a U& name', "SET U&\"anthropic.environment\\005Fkey\" = $q;" ],
		[ 'set_config with a built name', "SELECT set_config('anthropic.' || 'environment' || '_key', $q, false) IS NOT NULL;" ],
		[ 'set_config with an E string', "SELECT set_config(E'anthropic.environment\\x5fkey', $q, false) IS NOT NULL;" ],
		[ 'DO block', "DO \$\$BEGIN PERFORM set_config('anthropic.environment_key', $q, false); END\$\$;" ],
		[ 'syntax error', "SET anthropic.environment_key = $q garbage;" ],
		($ident ? ([ 'unquoted value', "SET anthropic.environment_key TO $k;" ]) : ()),
		[ 'HINT of a message', "SET anthropic.environment_key = $q; DO \$\$BEGIN RAISE NOTICE 'n' USING HINT = 'key: ' || $q; END\$\$;" ],
		[ 'ALTER SYSTEM', "ALTER SYSTEM SET anthropic.environment_key = $q; SELECT pg_reload_conf(); SELECT pg_sleep(0.3); ALTER SYSTEM RESET anthropic.environment_key; SELECT pg_reload_conf();" ],
		[ 'a function', "SELECT setk($q) IS NOT NULL;" ],
		[ 'a DO block calling a function', "DO \$\$BEGIN PERFORM setk($q); END\$\$;" ],
		[ 'RESET', "RESET anthropic.environment_key;" ],
	);
}

sub setup_roles
{
	my ($node) = @_;
	$node->safe_psql('postgres', q{
CREATE ROLE reader LOGIN IN ROLE pg_read_all_stats, pg_read_all_settings;
CREATE FUNCTION setk(v text) RETURNS text LANGUAGE plpgsql AS
  $$BEGIN RETURN set_config('anthropic.environment_key', v, false); END$$;
});
}

# -- The log and the client, in English and in German.
for my $lang ('C', 'de_DE.UTF-8')
{
	my $name = $lang eq 'C' ? 'log_en' : 'log_de';
	my $node = $fake->new_node($name, conf => $logconf . "lc_messages = '$lang'\n",
		init => { extra => [ '--encoding=UTF8', '--locale=C.UTF-8' ] });
	setup_roles($node);
	my $pos = -s $node->logfile;
	my $client = '';
	for my $label (sort keys %KEYS)
	{
		my $k = $KEYS{$label};
		my $q = sql_quote($k);
		for my $st (key_statements($k))
		{
			my ($what, $sql) = @$st;
			# log_statement writes a statement before it runs: a key passed
			# to a function of one's own is not known yet (README, Security).
			next if $what =~ /a function$/;
			my ($rc, $out, $err) = $node->psql('postgres',
				"\\set VERBOSITY verbose\nSET client_min_messages = debug5;\n$sql", on_error_stop => 0);
			$client .= "$out\n$err\n";
			no_keys(server_sent("$out\n$err"), "$lang, $label key, $what: the client sees no key", $k);
		}
		# The extended protocol: the key as a bind parameter, which the log
		# shows in a DETAIL of the "execute" line (psql has \bind from 16).
		if ($node->safe_psql('postgres', 'SHOW server_version_num') >= 160000)
		{
			my ($rc, $out, $err) = $node->psql('postgres',
				"SET client_min_messages = debug5;\nSELECT set_config(\$1, \$2, false) IS NOT NULL \\bind 'anthropic.environment_key' $q \\g",
				on_error_stop => 0);
			like($out, qr/^t$/m, "$lang, $label key, bind parameters: set_config ran");
			no_keys(server_sent("$out\n$err"), "$lang, $label key, bind parameters: the client sees no key", $k);
		}
		# A literal left open: the syntax error quotes it.  It must be the
		# script's last line, since it runs to the end of the text.
		my $open = "SET anthropic.environment_key = '" . ($k =~ s/'/''/gr);
		my ($rc, $out, $err) = $node->psql('postgres',
			"\\set VERBOSITY verbose\nSET client_min_messages = debug5;\n$open", on_error_stop => 0);
		like($err, qr/(?:ERROR|FEHLER):  42601: /, "$lang, $label key, unterminated literal: a syntax error");
		no_keys(server_sent("$out\n$err"), "$lang, $label key, unterminated literal: the client sees no key", $k);
		$client .= $err;
	}
	# The server must have logged those statements, masked.
	$node->safe_psql('postgres', 'SELECT 1');
	my $log = slurp_file($node->logfile, $pos);
	like($log, qr/SET anthropic\.environment_key = '\*{8}'/, "$lang: log_statement logged the SET, value masked");
	like($log, qr/set_config\('\*{8}' \|\| '\*{8}' \|\| '\*{8}', '\*{8}', false\)/,
		"$lang: and set_config() with a built name, literals masked");
	like($client, qr/(?:HINT|TIPP):  key: \*{8}/, "$lang: a HINT that carries the key is masked");
	if ($lang ne 'C')
	{
		like($log, qr/LOG:  Anweisung: /, 'de: the server log is in German');
		unlike($log, qr/LOG:  statement: /, 'de: with no English statement lines');
	}
	no_keys($log, "$lang: the server log holds no key");
	$node->stop;
	no_keys(slurp_file($node->logfile), "$lang: nor after shutdown");
}

# -- The client with log_min_messages = fatal: PostgreSQL does not call the
# log hook then, so what the extension raises must be masked already.
{
	my $node = $fake->new_node('client');
	for my $label (sort keys %KEYS)
	{
		my $k = $KEYS{$label};
		$fake->clear_faults;
		$fake->fault({ path_regex => '^/v1/', times => -1, status => 401,
			headers => { 'request-id' => "req_$k" },
			body => encode_json({ type => 'error', error => { type => 'authentication_error',
				message => "invalid x-api-key $k", details => { error_code => $k } } }) });
		my $q = sql_quote($k);
		my ($rc, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose
SET log_min_messages = fatal;
SET anthropic.api_key = $q;
SELECT anthropic.env_get('env_x');
SELECT anthropic.sync(raise_on_error => false);
RESET log_min_messages;
", on_error_stop => 0);
		like($err, qr/ERROR:  28000: Anthropic API request failed: invalid x-api-key \*{8}/,
			"$label key: the API's error reaches the client masked");
		no_keys("$out\n$err", "$label key: the client sees no key at log_min_messages = fatal", $k);
		my $tables = $node->safe_psql('postgres', q{
SELECT string_agg(coalesce(error, ''), ' ') FROM anthropic.sync_runs;
SELECT string_agg(coalesce(last_error, ''), ' ') FROM anthropic.sync_status;});
		like($tables, qr/invalid x-api-key \*{8}/, "$label key: sync_runs.error records the failure");
		no_keys($tables, "$label key: no key in sync_runs.error or sync_status.last_error", $k);
	}
	$fake->clear_faults;
	$node->stop;
}

# -- pg_stat_activity, during and after, seen by a pg_read_all_stats member.
{
	my $node = $fake->new_node('activity');
	setup_roles($node);
	my $admin = $node->background_psql('postgres', on_error_stop => 0);
	my $pid = $admin->query_safe('SELECT pg_backend_pid()');
	my $n = 0;
	my $seen = sub {
		return $node->safe_psql('postgres', "SELECT query FROM pg_stat_activity WHERE pid = $pid",
			extra_params => [ '-U', 'reader' ]);
	};
	for my $label (sort keys %KEYS)
	{
		my $k = $KEYS{$label};
		for my $st (key_statements($k))
		{
			my ($what, $sql) = @$st;
			# query() would send a ";" after it, which the reader would see.
			$n++;
			$admin->query_until(qr/after_$n\n/, "$sql\n\\echo after_$n\n");
			my $q = $seen->();
			like($q, qr/^(?!;$).*[A-Za-z]/, "$label key, $what: the reader sees the admin's last statement, not a bare ';'");
			no_keys($q, "$label key, $what: pg_stat_activity shows no key afterwards", $k);
		}
		# While the statement runs: a sleep after the key is set.
		my $q = sql_quote($k);
		for my $during ([ 'set_config', "SELECT set_config('anthropic.' || 'environment_key', $q, false) IS NOT NULL, pg_sleep(1.5);" ],
			[ 'function', "SELECT setk($q) IS NOT NULL, pg_sleep(1.5);" ],
			[ 'SET LOCAL in a transaction', "BEGIN; SET LOCAL anthropic.environment_key = $q; SELECT pg_sleep(1.5); COMMIT;" ])
		{
			$admin->query_until(qr/go/, "\\echo go\n$during->[1]\n\\echo done\n");
			my $active = FakeApi::activity_while_sleeping($node, $pid, 'reader');
			like($active, qr/^active\|/, "$label key, $during->[0]: caught while it runs");
			no_keys($active, "$label key, $during->[0]: pg_stat_activity shows no key while it runs", $k);
			$admin->query_until(qr/done/, '');
		}
	}
	$admin->quit;
	$node->stop;
}

# -- pg_stat_statements, listed first: nothing it stores holds a key.
{
	my $node = $fake->new_node('pgss_first', preload => 'pg_stat_statements,anthropic_env',
		conf => "pg_stat_statements.track = all\npg_stat_statements.track_utility = on\n");
	$node->safe_psql('postgres', 'CREATE EXTENSION pg_stat_statements');
	setup_roles($node);
	for my $label (sort keys %KEYS)
	{
		$node->psql('postgres', $_->[1], on_error_stop => 0) for key_statements($KEYS{$label});
	}
	my $stored = $node->safe_psql('postgres', 'SELECT query FROM pg_stat_statements',
		extra_params => [ '-U', 'reader' ]);
	like($stored, qr/anthropic\.environment_key/i, 'pg_stat_statements recorded the statements');
	no_keys($stored, 'pg_stat_statements listed first holds no key');
	unlike(slurp_file($node->logfile), qr/is listed after anthropic_env/, 'and no startup warning in that order');
	$node->stop;

	my $second = $fake->new_node('pgss_second', preload => 'anthropic_env,pg_stat_statements');
	like(slurp_file($second->logfile),
		qr/WARNING:  pg_stat_statements is listed after anthropic_env in shared_preload_libraries, so it can store keys in statement texts\n(?:.*\n)*?.*HINT:  List pg_stat_statements first: shared_preload_libraries = 'pg_stat_statements,anthropic_env'\./,
		'listed second: a startup WARNING names the safe order');
	$second->stop;
}

# -- pg_db_role_setting, and running without shared_preload_libraries.
{
	my $node = $fake->new_node('nopreload', preload => '', create => 0);
	my ($rc, $out, $err) = $node->psql('postgres', 'CREATE EXTENSION anthropic_env');
	is($rc, 0, 'CREATE EXTENSION works without preloading');
	like($err, qr/WARNING:  anthropic_env is not loaded through shared_preload_libraries\n(?:.*\n)*?HINT:  Add anthropic_env to shared_preload_libraries/,
		'and warns, with a HINT');
	$fake->clear_requests;
	($rc, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\nSELECT anthropic.env_get('env_x')");
	like($err, qr/ERROR:  55000: anthropic_env must be loaded through shared_preload_libraries to send requests\n(?:.*\n)*?HINT:  Add anthropic_env to shared_preload_libraries/,
		'a call without preloading fails with 55000 and a HINT');
	is(scalar @{ $fake->requests }, 0, 'and sends no request');

	# Without the library the settings are placeholders: nothing refuses them.
	$node->safe_psql('postgres', 'CREATE ROLE app LOGIN; CREATE DATABASE other;');
	$node->safe_psql('postgres', 'ALTER ROLE app SET anthropic.environment_key = ' . sql_quote($KEYS{live}));
	$node->safe_psql('postgres', 'ALTER DATABASE other SET anthropic.api_key = ' . sql_quote($KEYS{odd}));
	$node->safe_psql('postgres', 'ALTER ROLE app IN DATABASE other SET "Anthropic.Environment_Key" = ' . sql_quote($KEYS{ant}));
	$node->safe_psql('postgres', "ALTER ROLE app SET work_mem = '8MB'");
	my $pos = -s $node->logfile;
	$node->append_conf('postgresql.conf', "shared_preload_libraries = 'anthropic_env'\n");
	$node->restart;
	my $log = '';
	for (1 .. 100)
	{
		$log = slurp_file($node->logfile, $pos);
		last if ($log =~ tr/\n//) && $log =~ /role "app" in database "other"/;
		usleep(50_000);
	}
	like($log, qr/WARNING:  anthropic\.environment_key is stored in pg_db_role_setting for role "app"\n(?:.*\n)*?.*HINT:  Remove it with ALTER ROLE app RESET anthropic\.environment_key;/,
		'startup: a key stored for a role is reported with its RESET');
	like($log, qr/WARNING:  anthropic\.api_key is stored in pg_db_role_setting for database "other"\n(?:.*\n)*?.*HINT:  Remove it with ALTER DATABASE other RESET anthropic\.api_key;/,
		'startup: a key stored for a database is reported with its RESET');
	like($log, qr/WARNING:  Anthropic\.Environment_Key is stored in pg_db_role_setting for role "app" in database "other"\n(?:.*\n)*?.*HINT:  Remove it with ALTER ROLE app IN DATABASE other RESET ALL;/,
		'startup: a key stored under another spelling is reported with the RESET ALL that removes it');
	unlike($log, qr/work_mem/, 'other settings are not reported');
	no_keys($log, 'the startup warnings hold no value');

	# Preloaded, ALTER ROLE ... SET of a key is refused.
	($rc, $out, $err) = $node->psql('postgres', 'ALTER ROLE app SET anthropic.environment_key = ' . sql_quote($KEYS{odd}));
	like($err, qr/ERROR:  Anthropic keys cannot be stored with ALTER ROLE/, 'preloaded: ALTER ROLE SET of a key is refused');
	no_keys($err, 'without echoing the value');

	# The statements the HINTs give remove them; the next start is quiet.
	my @resets = $log =~ /HINT:  Remove it with (ALTER .*?;)/g;
	is(scalar @resets, 3, 'three HINTs, each with its statement');
	$node->safe_psql('postgres', join("\n", @resets));
	is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_db_role_setting, unnest(setconfig) c WHERE c ILIKE 'anthropic.%'}),
		'0', 'the RESETs remove every stored key');
	$pos = -s $node->logfile;
	$node->restart;
	$node->safe_psql('postgres', 'SELECT pg_sleep(0.5)');
	unlike(slurp_file($node->logfile, $pos), qr/stored in pg_db_role_setting/, 'after the RESETs the next start warns of nothing');
	$node->stop;
}

done_testing();
