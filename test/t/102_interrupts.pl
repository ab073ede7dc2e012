# Reliability: pg_cancel_backend and pg_terminate_backend end every kind of
# wait within 200 ms (design.md section 3: "Every wait (backoff, long poll,
# transfer) is interruptible"):
#   - a slow transfer (the fake holds its answer);
#   - a retry backoff sleep (429 with retry-after: 30);
#   - a work_poll long poll (held by the fake, and the natural block_ms);
#   - an env_get_many batch, when anthropic.env_get_many(text[], integer)
#     exists.
# After a cancel the same session works; after a terminate a new session
# works and the server did not restart.
# Latency is measured server-side: for a cancel, from just before
# pg_cancel_backend to the clock_timestamp() of the DO block's exception
# handler (as 001_cancel.pl does); for a terminate, from just before
# pg_terminate_backend until the pid is gone from pg_stat_activity.
use strict;
use warnings;

use FakeApi;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $LIMIT_MS = 200;

my $fake = FakeApi->start;
# The subs below hold $fake, so global destruction may not stop it: do it here.
END { local $?; $fake->stop if $fake; }
my $node = $fake->new_node('interrupts');
my $started = $node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()');

$node->safe_psql('postgres', q{
CREATE FUNCTION t_terminate(p int) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
	t0 timestamptz := clock_timestamp();
BEGIN
	PERFORM pg_terminate_backend(p);
	LOOP
		-- pg_stat_activity is a per-transaction snapshot: drop it each time.
		PERFORM pg_stat_clear_snapshot();
		EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = p);
		EXIT WHEN clock_timestamp() - t0 > interval '10 s';
		PERFORM pg_sleep(0.002);
	END LOOP;
	RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
END $$;
});

my $env = $node->safe_psql('postgres', q{SELECT id FROM anthropic.env_create('{"name": "interrupts"}')});
like($env, qr/^env_/, 'created an environment');
my $senv = $node->safe_psql('postgres',
	q{SELECT id FROM anthropic.env_create('{"name": "interrupts-queue", "config": {"type": "self_hosted"}}')});
my @batch_ids = map {
	$node->safe_psql('postgres', qq{SELECT id FROM anthropic.env_create('{"name": "batch-$_"}')})
} 1 .. 4;

my $have_many = $node->safe_psql('postgres',
	q{SELECT to_regprocedure('anthropic.env_get_many(text[], integer)') IS NOT NULL});

my $seq = 0;

# Starts psql running $call inside a DO block that records when a cancel
# arrived, then $next in the same session.
sub start_call
{
	my ($call, $next) = @_;
	my $app = 't102_' . ++$seq;
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[ 'psql', '-XAtq', '-d', $node->connstr('postgres') . " application_name=$app",
		  '-v', 'ON_ERROR_STOP=0',
		  '-c', qq{DO \$\$ BEGIN $call; RAISE NOTICE 'call returned'; EXCEPTION WHEN query_canceled THEN
		      RAISE NOTICE 'canceled_at=% sqlstate=%', extract(epoch FROM clock_timestamp()), SQLSTATE; END \$\$;},
		  '-c', $next ],
		'>', \$out, '2>', \$err);
	return { h => $h, out => \$out, err => \$err, app => $app };
}

# Waits until the call's backend shows the Extension wait event and $ready
# (a sub) agrees; returns its pid or ''.
sub wait_for
{
	my ($c, $ready) = @_;
	return FakeApi::wait_in_extension($node, $c->{app}, $ready);
}

sub requests_matching { return $fake->requests_matching(@_); }

# One scenario: sets up the wait, interrupts it both ways.
#   fault: rule to install first (times 1 per run)
#   call:  SQL the DO block PERFORMs
#   ready: extra condition before interrupting
#   next:  statement run in the same session after a cancel, and its output
sub scenario
{
	my (%sc) = @_;
	for my $mode ('cancel', 'terminate')
	{
		my $label = "$sc{name}: $mode";
		$fake->clear_faults;
		$fake->clear_requests;
		$fake->fault($sc{fault}) if $sc{fault};
		my $c = start_call($sc{call}, $sc{next}[0]);
		my $pid = wait_for($c, $sc{ready});
		isnt($pid, '', "$label: the call is waiting (Extension wait event)");
		if ($pid eq '')
		{
			$c->{h}->kill_kill;
			next;
		}
		# Still waiting a little later: we interrupt a real wait.
		usleep(100_000);
		if ($mode eq 'cancel')
		{
			my ($sent_at) = split /\|/, $node->safe_psql('postgres',
				"SELECT extract(epoch FROM clock_timestamp()), pg_cancel_backend($pid)");
			$c->{h}->finish;
			my ($canceled_at) = ${ $c->{err} } =~ /canceled_at=([\d.]+) sqlstate=57014/;
			ok(defined $canceled_at, "$label: the call ended with SQLSTATE 57014")
			  or diag ${ $c->{err} };
			my $ms = (($canceled_at // 1e12) - $sent_at) * 1000;
			cmp_ok($ms, '<', $LIMIT_MS, "$label: took effect within $LIMIT_MS ms ($ms ms)");
			$fake->clear_faults;
			like(${ $c->{out} }, $sc{next}[1], "$label: the same session works afterwards")
			  or diag ${ $c->{out} } . ${ $c->{err} };
		}
		else
		{
			my $ms = $node->safe_psql('postgres', "SELECT t_terminate($pid)");
			cmp_ok($ms, '<', $LIMIT_MS, "$label: the backend was gone within $LIMIT_MS ms ($ms ms)");
			$c->{h}->finish;
			like(${ $c->{err} }, qr/terminating connection due to administrator command/,
				"$label: the session was terminated");
			$fake->clear_faults;
			my $next = $node->safe_psql('postgres', "SELECT name FROM anthropic.env_get('$env')");
			is($next, 'interrupts', "$label: a new session works");
			is($node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'), $started,
				"$label: the server did not restart");
		}
	}
}

my @next_get = ("SELECT 'next=' || name FROM anthropic.env_get('$env')", qr/^next=interrupts$/m);

scenario(
	name => 'slow transfer',
	fault => { path_regex => "^/v1/environments/$env\$", delay_ms => 15000, times => 1 },
	call => "PERFORM anthropic.env_get('$env')",
	ready => sub { requests_matching(qr{^/v1/environments/$env$}) >= 1 },
	next => \@next_get);

scenario(
	name => 'retry backoff sleep',
	fault => { path_regex => "^/v1/environments/$env\$", status => 429, times => 1,
		headers => { 'retry-after' => '30' } },
	call => "PERFORM anthropic.env_get('$env')",
	ready => sub { requests_matching(qr{^/v1/environments/$env$}, 1) >= 1 },
	next => \@next_get);

scenario(
	name => 'work_poll long poll held by the fake',
	fault => { path_regex => '/work/poll$', delay_ms => 15000, times => 1 },
	call => "PERFORM anthropic.work_poll('$senv', block_ms => 999)",
	ready => sub { requests_matching(qr{/work/poll$}) >= 1 },
	next => [ "SELECT 'polled=' || count(*) FROM anthropic.work_poll('$senv', block_ms => 1)", qr/^polled=0$/m ]);

scenario(
	name => 'work_poll natural block_ms 999 on an empty queue',
	call => "PERFORM anthropic.work_poll('$senv', block_ms => 999)",
	ready => sub { requests_matching(qr{/work/poll$}) >= 1 },
	next => \@next_get);

SKIP:
{
	skip 'anthropic.env_get_many(text[], integer) does not exist (yet): batch scenario skipped', 9
	  unless $have_many eq 't';
	my $array = 'ARRAY[' . join(',', map { "'$_'" } @batch_ids) . ']';
	scenario(
		name => 'env_get_many batch',
		fault => { path_regex => '^/v1/environments/env_', delay_ms => 15000, times => -1 },
		call => "PERFORM anthropic.env_get_many($array, 4)",
		ready => sub { requests_matching(qr{^/v1/environments/env_}) >= 1 },
		next => [ "SELECT 'many=' || count(*) FROM anthropic.env_get_many($array, 4)", qr/^many=[1-9]/m ]);
}

# The server is fine: no crash, no restart, nothing left waiting.
is($node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'), $started, 'the server never restarted');
is($node->safe_psql('postgres',
	q{SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 't102_%'}), '0',
	'no interrupted session is left behind');
$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal|was terminated by|PANIC/, 'no backend crashed');

done_testing();
