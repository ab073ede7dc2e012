# Robustness: 600 calls answered by the fake's seeded random fault (random
# statuses and retry headers, truncated or invalid JSON, wrong JSON types,
# arrays, objects without id, 20,000-deep nesting, 1.5 MB strings, invalid
# UTF-8, NUL bytes, NaN, empty and HTML bodies, mid-body closes) on env_get,
# env_list, work_poll, work_heartbeat and env_create, in one session.
# Every call either succeeds or fails with a design.md SQLSTATE, the server
# never restarts, no backend dies, and the session stays usable.
# The seed is fixed: a failure reproduces with the same seed and order.
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $SEED = $ENV{AE_RANDOM_SEED} // 20261128;
my $ROUNDS = 120;    # x 5 endpoints = 600 calls
my %allowed = map { $_ => 1 } qw(22023 28000 42501 42704 55000 40001 54000 53400 58000 08006);

my $fake = FakeApi->start;
my $node = $fake->new_node('random');
my $started = $node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()');
my $env = $node->safe_psql('postgres',
	q{SELECT id FROM anthropic.env_create('{"name": "random", "config": {"type": "self_hosted"}}')});
my $work = $fake->call('POST', "/_fake/environments/$env/work", {})->{id};

my $s = $node->background_psql('postgres', on_error_stop => 0);
my $pid = $s->query_safe('SELECT pg_backend_pid()');
chomp $pid;
$s->query_safe(q{CREATE TEMP TABLE outcomes (round int, fn text, state text, msg text)});
$s->query_safe(qq{
CREATE FUNCTION pg_temp.random_round(first int, last int) RETURNS void LANGUAGE plpgsql AS \$f\$
DECLARE
	fns text[] := ARRAY['env_get', 'env_list', 'work_poll', 'work_heartbeat', 'env_create'];
	f text;
	st text;
	m text;
BEGIN
	FOR i IN first .. last LOOP
		FOREACH f IN ARRAY fns LOOP
			BEGIN
				CASE f
					WHEN 'env_get' THEN PERFORM * FROM anthropic.env_get('$env');
					WHEN 'env_list' THEN PERFORM count(*) FROM anthropic.env_list(page_size => 5);
					WHEN 'work_poll' THEN PERFORM count(*) FROM anthropic.work_poll('$env');
					WHEN 'work_heartbeat' THEN PERFORM * FROM anthropic.work_heartbeat('$env', '$work');
					WHEN 'env_create' THEN PERFORM * FROM anthropic.env_create('{"name": "random"}');
				END CASE;
				INSERT INTO outcomes VALUES (i, f, 'ok', NULL);
			EXCEPTION WHEN OTHERS THEN
				GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, m = MESSAGE_TEXT;
				INSERT INTO outcomes VALUES (i, f, st, left(m, 200));
			END;
		END LOOP;
	END LOOP;
END \$f\$});

$fake->clear_requests;
my $rule = $fake->fault({ path_regex => '^/v1/', random => { seed => $SEED }, times => -1 })->{id};
$s->query_safe(q{SET anthropic.max_retries = 0; SET anthropic.timeout_ms = 3000; SET anthropic.connect_timeout_ms = 1000});

my $t0 = time;
my $alive = 1;
for (my $first = 1; $first <= $ROUNDS; $first += 20)
{
	my $last = $first + 19;
	my $out = $s->query("SELECT pg_temp.random_round($first, $last)");
	if ($s->{stderr} =~ /server closed the connection|terminating connection|connection to server .* lost/)
	{
		$alive = 0;
		diag "the session died in rounds $first..$last: $s->{stderr}";
		last;
	}
}
my $secs = sprintf('%.1f', time - $t0);
ok($alive, "the session survived $ROUNDS rounds ($secs s, seed $SEED)");

my $summary = $alive ? $s->query_safe(q{SELECT fn || ' ' || state || ' ' || count(*) FROM outcomes GROUP BY fn, state ORDER BY fn, state}) : '';
note "outcomes by endpoint and SQLSTATE:\n$summary";
my $total = $alive ? $s->query_safe('SELECT count(*) FROM outcomes') : 0;
chomp $total;
is($total, $ROUNDS * 5, 'every call returned or raised an error');
my @bad = $alive ? grep { $_ ne '' } split /\n/, $s->query_safe(q{
	SELECT round || ' ' || fn || ' ' || state || ' ' || coalesce(msg, '') FROM outcomes
	WHERE state NOT IN ('ok', '22023', '28000', '42501', '42704', '55000', '40001', '54000', '53400', '58000', '08006')
	ORDER BY round}) : ('session died');
ok(!@bad, 'every failure carries a design.md SQLSTATE') or diag join("\n", @bad[ 0 .. ($#bad < 20 ? $#bad : 19) ]);
my $ok = grep { / ok \d+$/ } split /\n/, $summary;
cmp_ok($ok, '>=', 1, 'some calls succeeded (2xx answers of the right shape)');
my %states = map { (split / /)[1] => 1 } split /\n/, $summary;
cmp_ok(scalar(grep { $_ ne 'ok' } keys %states), '>=', 5, 'and many kinds of failure were met: ' . join(',', sort keys %states));

my $fired = (grep { $_->{id} eq $rule } @{ $fake->call('GET', '/_fake/faults')->{data} })[0]{fired};
cmp_ok($fired, '>=', $ROUNDS * 5, "the random fault answered every request ($fired)");

# The session is usable, in the same backend, once the faults are gone.
$fake->clear_faults;
my $after = $s->query('RESET anthropic.max_retries; SELECT pg_backend_pid() || \' \' || name FROM anthropic.env_get(\'' . $env . '\')');
chomp $after;
is($after, "$pid random", 'the same session works afterwards');
$s->quit;

is($node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'), $started, 'the server never restarted');
$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal|was terminated|PANIC|TRAP:/, 'no backend crashed');

done_testing();
