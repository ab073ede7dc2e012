# The local mirror: anthropic.sync() and the background worker.
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $fake = FakeApi->start;
$fake->bulk(2500);

my $node = $fake->new_node('sync',
	init => { allows_streaming => 1 },
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '30s'\nrestart_after_crash = on\n");

sub poll_until { return FakeApi::poll_until($node, @_); }

# The worker mirrors 2,500 environments within one interval of starting.
is(poll_until(q{SELECT count(*) FROM anthropic.environments}, '2500', 30), '2500',
	'the worker mirrored 2,500 environments within one interval');
is($node->safe_psql('postgres', q{SELECT status || ' ' || seen FROM anthropic.sync_runs ORDER BY run_id DESC LIMIT 1}),
	'ok 2500', 'the run is recorded');
like($node->safe_psql('postgres', q{SELECT backend_type || '|' || application_name FROM pg_stat_activity WHERE backend_type = 'anthropic_env sync'}),
	qr/^anthropic_env sync\|anthropic_env sync worker$/, 'the worker shows in pg_stat_activity');
my $pid = $node->safe_psql('postgres', 'SELECT worker_pid FROM anthropic.sync_status');
like($pid, qr/^\d+$/, 'sync_status shows the worker pid');

# sync_now() mirrors a new environment within 2 s.
my $new = $node->safe_psql('postgres', q{SELECT id FROM anthropic.env_create('{"name": "fresh"}')});
my $t0 = time;
is($node->safe_psql('postgres', 'SELECT anthropic.sync_now()'), 't', 'sync_now() wakes the worker');
is(poll_until("SELECT count(*) FROM anthropic.environments WHERE id = '$new'", '1', 2), '1',
	'sync_now() mirrored a new environment within 2 s');
note sprintf('sync_now to mirrored: %.0f ms', (time - $t0) * 1000);

# From here on, manual syncs: push the worker's next run an hour away.
$node->append_conf('postgresql.conf', "anthropic.sync_interval = '1h'\n");
$node->reload;
usleep(500_000);
like($node->safe_psql('postgres', q{SELECT next_run_at > now() + interval '50 min' FROM anthropic.sync_status}),
	qr/^t$/, 'a longer interval takes effect on reload');

# Deleted remotely: deleted_at is set, the row is kept; back again: cleared.
my $victim = $node->safe_psql('postgres', q{SELECT id FROM anthropic.environments WHERE name = 'fresh'});
my $raw = $node->safe_psql('postgres', "SELECT raw FROM anthropic.environments WHERE id = '$victim'");
$node->safe_psql('postgres', "SELECT anthropic.env_delete('$victim')");
$node->safe_psql('postgres', 'SELECT anthropic.sync()');
is($node->safe_psql('postgres', "SELECT deleted_at IS NOT NULL FROM anthropic.environments WHERE id = '$victim'"),
	't', 'a deleted environment gets deleted_at');
$fake->call('POST', '/_fake/environments/raw', JSON::PP::decode_json($raw));
my $run = $node->safe_psql('postgres', 'SELECT updated || \' \' || marked_deleted FROM anthropic.sync()');
is($node->safe_psql('postgres', "SELECT deleted_at IS NULL FROM anthropic.environments WHERE id = '$victim'"),
	't', 'an environment that comes back has deleted_at cleared');
is($run, '1 0', 'the revival counts as one update');

# A sync with no remote change writes no tuple.
$node->safe_psql('postgres', 'SELECT anthropic.sync()');
my $writes = q{SELECT pg_stat_force_next_flush(); SELECT n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables WHERE relid = 'anthropic.environments'::regclass};
my $before = (split /\n/, $node->safe_psql('postgres', $writes))[-1];
my $quiet = $node->safe_psql('postgres', 'SELECT inserted + updated + marked_deleted FROM anthropic.sync()');
my $after = (split /\n/, $node->safe_psql('postgres', $writes))[-1];
is($quiet, '0', 'the second sync reports no change');
is($after - $before, 0, 'and pg_stat_user_tables shows no tuple written');

# A 500 on page 3 of 25 leaves the mirror exactly as it was.
my $digest = q{SELECT md5(string_agg(e::text, ',' ORDER BY id)) FROM anthropic.environments e};
my $mirror = $node->safe_psql('postgres', $digest);
$node->safe_psql('postgres', q{SELECT anthropic.env_create('{"name": "unseen"}')});
$fake->clear_requests;
$fake->fault({ method => 'GET', path_regex => '^/v1/environments$', skip => 2, times => 3, status => 500,
	headers => { 'retry-after-ms' => '1' } });
my ($rc, $out, $err) = $node->psql('postgres', 'SELECT anthropic.sync(page_size => 100)');
like($err, qr/Internal server error/, 'the failing sync raises to its caller');
is($node->safe_psql('postgres', $digest), $mirror, 'the mirror is unchanged after a failure on page 3');
$fake->fault({ method => 'GET', path_regex => '^/v1/environments$', skip => 2, times => 3, status => 500,
	headers => { 'retry-after-ms' => '1' } });
is($node->safe_psql('postgres', q{SELECT status || ' ' || (error LIKE '%Internal server error%') FROM anthropic.sync(raise_on_error => false, page_size => 100)}),
	'error true', 'with raise_on_error => false the error is recorded in sync_runs');
is($node->safe_psql('postgres', $digest), $mirror, 'and the mirror is still unchanged');
is($node->safe_psql('postgres', q{SELECT last_run_status || ' ' || (last_error LIKE '%Internal server error%') FROM anthropic.sync_status}),
	'error true', 'sync_status shows the last error');
is($node->safe_psql('postgres', q{SELECT status || ' ' || inserted FROM anthropic.sync(page_size => 100)}),
	'ok 1', 'the next clean run recovers');

# SIGHUP: a shorter interval takes effect.
my $runs = $node->safe_psql('postgres', 'SELECT count(*) FROM anthropic.sync_runs');
$node->append_conf('postgresql.conf', "anthropic.sync_interval = '1s'\n");
$node->reload;
ok(poll_until("SELECT count(*) > $runs + 1 FROM anthropic.sync_runs", 't', 10) eq 't',
	'after SIGHUP the worker syncs at the new interval');

# SIGTERM stops the worker within a second.
$pid = $node->safe_psql('postgres', 'SELECT worker_pid FROM anthropic.sync_status');
$t0 = time;
kill 'TERM', $pid;
usleep(20_000) while kill(0, $pid) && time - $t0 < 5;
my $stop_ms = (time - $t0) * 1000;
ok(!kill(0, $pid), 'SIGTERM stopped the worker');
cmp_ok($stop_ms, '<', 1000, "within a second ($stop_ms ms)");

# kill -9 of the worker: the postmaster restarts it and syncing goes on.
my $back = poll_until(q{SELECT worker_pid IS NOT NULL FROM anthropic.sync_status}, 't', 20);
is($back, 't', 'the worker was restarted after SIGTERM');
$pid = $node->safe_psql('postgres', 'SELECT worker_pid FROM anthropic.sync_status');
kill 'KILL', $pid;
usleep(200_000);
my $restarted = '';
for (1 .. 300)
{
	my ($r, $o) = $node->psql('postgres', 'SELECT worker_pid FROM anthropic.sync_status');
	if ($r == 0 && $o =~ /^\d+$/ && $o ne $pid) { $restarted = $o; last; }
	usleep(100_000);
}
like($restarted, qr/^\d+$/, 'after kill -9 the worker runs again');
$runs = $node->safe_psql('postgres', 'SELECT max(run_id) FROM anthropic.sync_runs');
is(poll_until("SELECT max(run_id) > $runs FROM anthropic.sync_runs", 't', 20), 't', 'and keeps syncing');

# Slow the primary down, then check that a hot standby runs no sync.
$node->append_conf('postgresql.conf', "anthropic.sync_interval = '1h'\n");
$node->reload;
usleep(500_000);
$node->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($node, 'b', has_streaming => 1);
$standby->start;
$node->wait_for_catchup($standby);
usleep(1_500_000);
$fake->clear_requests;
usleep(3_000_000);
is(scalar @{ $fake->requests }, 0, 'the standby sends no request');
is($standby->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'anthropic_env sync'}),
	'0', 'no sync worker runs on the standby');
($rc, $out, $err) = $standby->psql('postgres', 'SELECT anthropic.sync()');
like($err, qr/cannot sync on a hot standby/, 'a manual sync on the standby is refused');
$standby->stop;

# sync_work: work items and queue statistics, never the secret.
my $sh = $node->safe_psql('postgres', q{SELECT id FROM anthropic.env_create('{"name": "runner", "config": {"type": "self_hosted"}}')});
$fake->call('POST', "/_fake/environments/$sh/work", {}) for 1 .. 3;
my $secret = $node->safe_psql('postgres', "SELECT secret FROM anthropic.work_poll('$sh')");
ok(length($secret) > 10, 'a polled item carries a secret');
$node->append_conf('postgresql.conf', "anthropic.sync_work = on\n");
$node->reload;
usleep(300_000);
$node->safe_psql('postgres', 'SELECT anthropic.sync()');
is($node->safe_psql('postgres', "SELECT count(*) FROM anthropic.work_items WHERE environment_id = '$sh'"),
	'3', 'work items are mirrored');
is($node->safe_psql('postgres', "SELECT depth || ' ' || pending FROM anthropic.work_queue_stats_history WHERE environment_id = '$sh'"),
	'2 1', 'one queue-statistics row per self-hosted environment');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM (
		SELECT t::text AS r FROM anthropic.work_items t
		UNION ALL SELECT t::text FROM anthropic.environments t
		UNION ALL SELECT t::text FROM anthropic.work_queue_stats_history t
		UNION ALL SELECT t::text FROM anthropic.sync_runs t) s
	WHERE r LIKE '%' || } . $node->safe_psql('postgres', "SELECT quote_literal('$secret')") . q{ || '%' OR r LIKE '%"secret"%'}),
	'0', 'no secret appears in any table');

# History older than the retention is pruned.
$node->safe_psql('postgres', qq{
	INSERT INTO anthropic.work_queue_stats_history VALUES ('$sh', now() - interval '30 days', 1, 0, NULL, 0);
	INSERT INTO anthropic.sync_runs (started_at, finished_at, status) VALUES (now() - interval '30 days', now() - interval '30 days', 'ok');});
$node->safe_psql('postgres', 'SELECT anthropic.sync()');
is($node->safe_psql('postgres', q{SELECT count(*) FROM anthropic.sync_runs WHERE started_at < now() - interval '7 days'}),
	'0', 'old sync_runs are pruned');
is($node->safe_psql('postgres', q{SELECT count(*) FROM anthropic.work_queue_stats_history WHERE observed_at < now() - interval '7 days'}),
	'0', 'old queue statistics are pruned');

# The mirror is not readable by PUBLIC.
$node->safe_psql('postgres', 'CREATE ROLE reporter LOGIN');
($rc, $out, $err) = $node->psql('postgres', 'SET ROLE reporter; SELECT count(*) FROM anthropic.environments');
like($err, qr/permission denied/, 'PUBLIC cannot read the mirror');

$node->stop;
unlike(slurp_file($node->logfile), qr/\Q$FakeApi::KEY\E/, 'the server log does not contain the key');
done_testing();
