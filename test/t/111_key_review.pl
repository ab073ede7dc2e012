# Keys never leak (README "Security"), continued: the ways around the
# masking that an independent review of 110_key_paths.pl's change found,
# each kept as a test.  None of the keys is "sk-ant-" shaped, so only
# masking by value or by statement can catch them:
#   - values in double quotes, signed numbers, values that begin with
#     "anthropic.", literals with standard_conforming_strings off;
#   - a setting name split by SQL's string continuation;
#   - syntax errors that quote the key (unterminated literal or identifier);
#   - pg_stat_activity while a multi-statement string runs, and with the
#     extended protocol (psql's \bind, 16 and later), and after each of
#     110's statements, read without BackgroundPsql's trailing ";";
#   - pg_stat_statements listed first;
#   - no over-masking of a script that never mentions a key, and no word
#     masked for good by a short key;
#   - the checks cost linear time in the statements of one string, also at
#     debug5, and odd texts do not crash the hooks.
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

# libpq prints "LINE n:" and a caret from its own copy of the query.
sub server_sent { return join "\n", grep { !/^(?:LINE \d+:|\s*\^|ZEILE \d+:)/ } split /\n/, shift; }

sub no_key
{
	my ($text, $key, $label) = @_;
	ok(index($text, $key) < 0, $label) or diag "found '$key' in:\n$text";
}

my $fake = FakeApi->start;
my $logconf = "log_min_messages = debug5\nlog_statement = all\nlog_min_error_statement = debug5\n";

# Keys set in ways the masking does not recognize.  [what, key to look for, SQL]
my @cases = (
	# var_value accepts a quoted identifier; only '...' literals are masked.
	[ 'SET with a double-quoted value', 'Ek Live Secret 7731',
		'SET anthropic.environment_key = "Ek Live Secret 7731";' ],
	# SQL's string continuation: the name is one constant, but its text
	# never says "key", so the statement is not sensitive.
	[ 'set_config with a continued name literal', 'ek_live_contd_8812',
		"SELECT set_config('anthropic.environment_k'\n'ey', 'ek_live_contd_8812', false) IS NOT NULL;" ],
	# A value that starts like a setting name is left unmasked (is_setting_name).
	[ 'a value shaped like a setting name', 'anthropic.Lq8v2Zr4Tx9w',
		"SET anthropic.environment_key = 'anthropic.Lq8v2Zr4Tx9w';" ],
	# A bare signed number: the bare value follows "-", not "=".
	[ 'a signed numeric bare value', '98765432101',
		'SET anthropic.environment_key = -98765432101;' ],
	# standard_conforming_strings = off: the scanner assumes it on.
	[ 'standard_conforming_strings off', 'live_scs_secret_4410',
		"SET standard_conforming_strings = off;\nSET escape_string_warning = off;\nSET anthropic.environment_key = 'ek\\'live_scs_secret_4410';\nRESET standard_conforming_strings;" ],
);

# Syntax errors that quote the key, sent as the script's last line.
my @open_cases = (
	[ 'unterminated quoted identifier', 'ek_live_qident_5521',
		'SET anthropic.environment_key = "ek_live_qident_5521' ],
	[ 'unterminated literal after a continued name', 'ek_live_contu_9913',
		"SELECT set_config('anthropic.environment_k'\n'ey', 'ek_live_contu_9913" ],
);

# -- The server log and the client (log_statement = all, debug5).
{
	my $node = $fake->new_node('rlog', conf => $logconf);
	for my $c (@cases)
	{
		my ($what, $key, $sql) = @$c;
		my $pos = -s $node->logfile;
		my ($rc, $out, $err) = $node->psql('postgres',
			"\\set VERBOSITY verbose\nSET client_min_messages = debug5;\n$sql\nSELECT 1;", on_error_stop => 0);
		no_key(server_sent("$out\n$err"), $key, "$what: the client sees no key");
		$node->safe_psql('postgres', 'SELECT 1');
		no_key(slurp_file($node->logfile, $pos), $key, "$what: the server log holds no key");
	}
	for my $c (@open_cases)
	{
		my ($what, $key, $sql) = @$c;
		my $pos = -s $node->logfile;
		my ($rc, $out, $err) = $node->psql('postgres',
			"\\set VERBOSITY verbose\nSET client_min_messages = debug5;\n$sql", on_error_stop => 0);
		like($err, qr/ERROR:  42601: /, "$what: a syntax error");
		no_key(server_sent("$out\n$err"), $key, "$what: the client sees no key");
		$node->safe_psql('postgres', 'SELECT 1');
		no_key(slurp_file($node->logfile, $pos), $key, "$what: the server log holds no key");
	}
	$node->stop;
}

# -- pg_stat_statements listed first (the README's safe order).
{
	my $node = $fake->new_node('rpgss', preload => 'pg_stat_statements,anthropic_env',
		conf => "pg_stat_statements.track = all\npg_stat_statements.track_utility = on\n");
	$node->safe_psql('postgres', 'CREATE EXTENSION pg_stat_statements');
	$node->safe_psql('postgres', 'CREATE ROLE reader LOGIN IN ROLE pg_read_all_stats');
	$node->psql('postgres', $_->[2], on_error_stop => 0) for @cases;
	$node->psql('postgres', 'ALTER SYSTEM SET anthropic.environment_key = "Ek Sys Secret 4242"; ALTER SYSTEM RESET anthropic.environment_key;',
		on_error_stop => 0);
	my $stored = $node->safe_psql('postgres', 'SELECT query FROM pg_stat_statements',
		extra_params => [ '-U', 'reader' ]);
	like($stored, qr/environment_key/i, 'pg_stat_statements recorded the statements');
	no_key($stored, $_->[1], "pg_stat_statements: no key from $_->[0]") for @cases;
	no_key($stored, 'Ek Sys Secret 4242', 'pg_stat_statements: no key from ALTER SYSTEM with a double-quoted value');
	$node->stop;
}

# -- pg_stat_activity while a statement runs, seen by pg_read_all_stats.
{
	my $node = $fake->new_node('ractivity');
	$node->safe_psql('postgres', 'CREATE ROLE reader LOGIN IN ROLE pg_read_all_stats');
	my $admin = $node->background_psql('postgres', on_error_stop => 0);
	my $pid = $admin->query_safe('SELECT pg_backend_pid()');
	my $major = $node->safe_psql('postgres', 'SHOW server_version_num');
	my @during = (
		# One query string, two statements: only the one being analyzed is
		# checked, while pg_stat_activity shows the whole string.
		[ 'multi-statement string, SET after a sleep', 'ek_live_multi_3307',
			"SELECT pg_sleep(1.5) \\; SET anthropic.environment_key = 'ek_live_multi_3307';" ],
	);
	# The extended protocol: Bind and Execute report the raw text again.
	push @during, [ 'extended protocol, set_config after a sleep', 'ek_live_ext_6620',
		"SELECT pg_sleep(1.5) IS NULL, set_config('anthropic.environment_key', 'ek_live_ext_6620', false) IS NOT NULL \\bind \\g" ]
	  if $major >= 160000;
	for my $d (@during)
	{
		my ($what, $key, $sql) = @$d;
		$admin->query_until(qr/go/, "\\echo go\n$sql\n\\echo done\n");
		my $active = FakeApi::activity_while_sleeping($node, $pid, 'reader');
		like($active, qr/^active\|/, "$what: caught while it runs");
		no_key($active, $key, "$what: pg_stat_activity shows no key while it runs");
		$admin->query_until(qr/done/, '');
	}
	# Afterwards.  BackgroundPsql's query() sends "$sql\n;\n", so the
	# reader then sees ";" rather than the statement: 110_key_paths.pl's
	# "afterwards" checks read that.  query_until() sends the statement alone.
	$node->safe_psql('postgres', q{CREATE FUNCTION setk(v text) RETURNS text LANGUAGE plpgsql AS
  $$BEGIN RETURN set_config('anthropic.environment_key', v, false); END$$;});
	my $n = 0;
	my @after = (
		[ 'syntax error with a double-quoted value', 'ek_live_after_4711',
			'SET anthropic.environment_key = "ek_live_after_4711" garbage;' ],
	);
	# The 110_key_paths.pl statements, read back properly.
	for my $k ('ek_live_4f9b2c7d1e8a6035', "Qm9v'Lx~Z3r-8p.y7Ws", 'sk-ant-api03-path-6c1d9e2f7a55')
	{
		(my $q = $k) =~ s/'/''/g;
		$q = "'$q'";
		push @after,
		  [ "110's SET", $k, "SET anthropic.environment_key = $q;" ],
		  [ "110's set_config with a built name", $k, "SELECT set_config('anthropic.' || 'environment' || '_key', $q, false) IS NOT NULL;" ],
		  [ "110's DO block", $k, "DO \$\$BEGIN PERFORM set_config('anthropic.environment_key', $q, false); END\$\$;" ],
		  [ "110's syntax error", $k, "SET anthropic.environment_key = $q garbage;" ],
		  [ "110's function", $k, "SELECT setk($q) IS NOT NULL;" ],
		  [ "110's ALTER SYSTEM", $k, "ALTER SYSTEM SET anthropic.environment_key = $q;" ];
	}
	push @after, [ 'ALTER SYSTEM RESET (clean-up)', 'no such key', 'ALTER SYSTEM RESET anthropic.environment_key;' ];
	for my $a (@after)
	{
		my ($what, $key, $sql) = @$a;
		$n++;
		$admin->query_until(qr/after_done_$n/, "$sql\n\\echo after_done_$n\n");
		my $seen = $node->safe_psql('postgres', "SELECT query FROM pg_stat_activity WHERE pid = $pid",
			extra_params => [ '-U', 'reader' ]);
		like($seen, qr/anthropic|setk|set_config/, "$what: the reader sees the statement itself, not \";\"");
		no_key($seen, $key, "$what: pg_stat_activity shows no key afterwards");
	}
	$admin->quit;
	$node->stop;
}

# -- Over-masking: a migration script sent as one string (pg_dump output
# starts with set_config('search_path', ...) and has PRIMARY KEY) never
# mentions a key setting, yet the whole string counts as sensitive, so
# every literal in it is masked by value in every message it raises.
{
	my $node = $fake->new_node('rover', conf => $logconf);
	my $pos = -s $node->logfile;
	my ($rc, $out, $err) = $node->psql('postgres',
		"SELECT set_config('search_path', 'public', false) \\; CREATE TABLE tk (k int PRIMARY KEY) \\; INSERT INTO tk VALUES ('notanumber');",
		on_error_stop => 0);
	like($err, qr/invalid input syntax for type integer: "notanumber"/,
		'a statement that never mentions a key keeps its error text');
	$node->safe_psql('postgres', 'SELECT 1');
	my $log = slurp_file($node->logfile, $pos);
	like($log, qr/statement: SELECT set_config\('search_path', 'public', false\)/,
		'and log_statement logs it as sent');
	like($log, qr/STATEMENT:  SELECT set_config\('search_path'/, 'and the error has its STATEMENT line');
	$node->stop;
}

# -- Costs.  A statement that says "key" and "set_config" is masked by
# copying the whole query string, once per statement; at debug5 every
# message re-scans the whole string.  Both grow with the square of the
# number of statements in one string.  The statements are joined with \;
# so that psql sends them as one query string (psql splits at ";", so
# "SELECT ...;" x 20000 sends 20,000 separate queries, as 110_key_paths.pl
# does).
{
	my $node = $fake->new_node('rcost', conf => "statement_timeout = '120s'\n");
	my $time = sub {
		my ($stmt, $n, $pre) = @_;
		my $t0 = Time::HiRes::time();
		my ($rc, $out, $err) = $node->psql('postgres', ($pre // '') . join(' \\; ', ($stmt) x $n) . ";\n",
			on_error_stop => 0);
		note "rc $rc: $err" if $rc;
		return Time::HiRes::time() - $t0;
	};
	my $plain = $time->("SELECT 'set_config kez'", 40000);
	my $keyed = $time->("SELECT 'set_config key'", 40000);
	note sprintf('40,000 statements in one string: %.2f s plain, %.2f s sensitive', $plain, $keyed);
	cmp_ok($keyed, '<', 4 * $plain + 2, 'sensitive statements in one string cost linear time');

	my $dbg = "SET log_min_messages = debug5;\n";
	my $dplain = $time->(q{DO $$BEGIN RAISE DEBUG 'kez'; END$$}, 3000, $dbg);
	my $dkeyed = $time->(q{DO $$BEGIN RAISE DEBUG 'key'; END$$}, 3000, $dbg);
	note sprintf('3,000 DO blocks raising a DEBUG in one string at debug5: %.2f s plain, %.2f s saying "key"', $dplain, $dkeyed);
	cmp_ok($dkeyed, '<', 3 * $dplain + 2, 'at debug5, statements that say "key" in one string cost linear time');
	$node->stop;
}

# -- Odd texts through the hooks: the server must survive each one.
{
	my $node = $fake->new_node('rodd', conf => $logconf);
	my $deep = "SELECT set_config('anthropic.environment_key', 'ek_live_deep_2024', false)";
	$deep = "DO \$d$_\$BEGIN EXECUTE \$q$_\$$deep\$q$_\$; END\$d$_\$" for 1 .. 6;
	my @odd = (
		"SELECT 'key anthropic' U&",
		"SELECT U&'\\' AS key, 'anthropic'",
		"SELECT \$a\$ anthropic key",
		"SELECT E'\\",
		"/* anthropic key",
		"SELECT 1 AS key, U&\"anthropic\" UESCAPE '",
		"SELECT set_config(E'anthropic.environment\\x5fkey', E'\\x", 
		$deep,
		"SET anthropic.environment_key = '" . ('x' x 200000) . "'",
	);
	for my $sql (@odd)
	{
		$node->psql('postgres', $sql, on_error_stop => 0);
		is($node->safe_psql('postgres', 'SELECT 1'), '1', 'the server answers after: ' . substr($sql, 0, 60));
	}
	unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no backend crashed');
	$node->stop;
}

# -- Over-masking by value: a key value that is a word ("public", six
# characters) is registered for good, even after RESET, and from then on
# masks that word in every message and statement text of the session.
{
	my $node = $fake->new_node('rword');
	my ($rc, $out, $err) = $node->psql('postgres', q{
SET anthropic.environment_key = 'public';
RESET anthropic.environment_key;
SELECT * FROM public.no_such_table;
}, on_error_stop => 0);
	like($err, qr/relation "public\.no_such_table" does not exist/,
		'after RESET, an ordinary error still names schema public');
	$node->stop;
}

done_testing();
