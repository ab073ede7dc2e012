# The sync worker and a manual sync() (issue 13, rule 6).
#   - While a manual sync() holds the sync lock in a transaction left idle,
#     the worker never waits on it: no ungranted lock of the worker in
#     pg_locks, no Lock wait event; each run is skipped with a LOG line and
#     tried again soon (several skips within seconds at a 1 h interval).
#   - The worker handles SIGHUP meanwhile: a new log_line_prefix shows on
#     its next skip line, while the lock is still held.
#   - Once the manual transaction ends, the worker's retry syncs, without
#     sync_now() and long before the interval.
#   - A manual sync() that waits for the worker (held in a slow page by the
#     fake) obeys lock_timeout: 55P03, at once.
use strict;
use warnings;

use FakeApi;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $fake = FakeApi->start;
$fake->bulk(20);
my $node = $fake->new_node('synclock',
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '1h'\n");
$node->safe_psql('postgres', $FakeApi::T_TRY);

sub poll_until { return FakeApi::poll_until($node, @_); }
sub ok_runs { return $node->safe_psql('postgres', q{SELECT count(*) FROM anthropic.sync_runs WHERE status = 'ok'}); }

is(poll_until(q{SELECT count(*) > 0 FROM anthropic.sync_runs WHERE status = 'ok'}, 't', 30), 't',
	'the worker ran its first sync');
my $wpid = $node->safe_psql('postgres', 'SELECT worker_pid FROM anthropic.sync_status');
like($wpid, qr/^\d+$/, 'the worker runs');
my $runs = ok_runs();

# A manual sync left idle in its transaction.
my ($in, $out, $err) = ('', '', '');
my $manual = IPC::Run::start([ 'psql', '-XAtq', '-d', $node->connstr('postgres') . ' application_name=t110_manual' ],
	'<', \$in, '>', \$out, '2>', \$err);
$in .= "BEGIN;\nSELECT 'manual=' || status FROM anthropic.sync();\n";
my $deadline = time + 30;
while ($out !~ /manual=ok/ && time < $deadline)
{
	$manual->pump_nb;
	usleep(20_000);
}
like($out, qr/manual=ok/, 'a manual sync() ran and its transaction stays open');

sub skip_lines
{
	my ($re) = @_;
	$re //= qr/^/;
	return scalar grep { /anthropic_env sync worker skipped a run: another session holds the sync lock/ && $_ =~ $re }
	  split /\n/, slurp_file($node->logfile);
}

my $t0 = time;
is($node->safe_psql('postgres', 'SELECT anthropic.sync_now()'), 't', 'sync_now() wakes the worker');
my ($waiting, $lockwait) = (0, 0);
while (time < $t0 + 3.5)
{
	$waiting += $node->safe_psql('postgres', "SELECT count(*) FROM pg_locks WHERE pid = $wpid AND NOT granted");
	$lockwait += $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE pid = $wpid AND wait_event_type = 'Lock'");
	usleep(50_000);
}
is($waiting, 0, 'the worker never had an ungranted lock while the manual sync held the lock');
is($lockwait, 0, 'and never showed a Lock wait event');
my $skips = skip_lines();
cmp_ok($skips, '>=', 2, "it skipped runs and tried again within seconds at a 1 h interval ($skips skips in 3.5 s)");
like(slurp_file($node->logfile), qr/the worker tries again in \d+ ms/, 'the LOG line says when it tries again');
is(ok_runs(), $runs, 'no worker run happened meanwhile');
like($node->safe_psql('postgres', q{SELECT next_run_at < now() + interval '1 min' FROM anthropic.sync_status}),
	qr/^t$/, 'sync_status shows the next try soon, not an interval away');

# SIGHUP meanwhile: the new prefix shows on the worker's next skip line.
$node->append_conf('postgresql.conf', "log_line_prefix = '%m [%p] t110-reloaded '\n");
$node->reload;
usleep(300_000);
$node->safe_psql('postgres', 'SELECT anthropic.sync_now()');
my $reloaded = 0;
$deadline = time + 20;
while (time < $deadline && !($reloaded = skip_lines(qr/t110-reloaded/)))
{
	usleep(100_000);
}
cmp_ok($reloaded, '>=', 1, 'the worker reloaded its configuration while the lock was held');
like($out, qr/manual=ok/, 'the manual transaction was still open then');

# The manual transaction ends: the worker's retry syncs on its own.
$in .= "COMMIT;\n\\q\n";
$manual->finish;
is(poll_until(q{SELECT count(*) FROM anthropic.sync_runs WHERE status = 'ok'}, $runs + 2, 40), $runs + 2,
	'once the lock is free, the worker syncs again without sync_now(), long before the interval');

# A manual sync that would wait for the worker obeys lock_timeout.
$fake->fault({ method => 'GET', path_regex => '^/v1/environments$', delay_ms => 5000, times => 1 });
$node->safe_psql('postgres', 'SELECT anthropic.sync_now()');
is(poll_until("SELECT count(*) FROM pg_stat_activity WHERE pid = $wpid AND wait_event_type = 'Extension'", '1', 10),
	'1', 'the worker is in a slow sync');
my $t1 = time;
my $r = $node->safe_psql('postgres', "SET lock_timeout = '200ms'; SELECT t_try('SELECT status FROM anthropic.sync()')");
my $ms = (time - $t1) * 1000;
like($r, qr/^err\|55P03\|/, 'a manual sync() waiting for the worker fails with 55P03 under lock_timeout') or diag $r;
cmp_ok($ms, '<', 2000, "and at once ($ms ms)");
$fake->clear_faults;

$node->stop;
done_testing();
