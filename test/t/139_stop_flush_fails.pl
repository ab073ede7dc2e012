# Review 14c: keeper_stop()'s last round is answered (the server now holds a
# new heartbeat), but its flush fails: a table lock on held_work (here a
# prepared transaction, which outlives the shutdown) holds it, and a second
# SIGTERM (pg_ctl stop -m fast after a first SIGTERM) cancels the wait.
# in_xact() swallows the 57014, flush_leases() returns, keeper_stop() sets
# stop_flushed, and keeper_exit() records nothing: held_work keeps the old
# last_heartbeat with beat_unanswered false.  After the restart the first
# beat meets the last round's heartbeat (412) and the item is dropped as
# lost although the server still runs our lease.  (The 300 ms lock_timeout
# alone, without the second SIGTERM, ends the same way.)
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $ttl = 10;
my $fake = FakeApi->start;
END { local $?; $fake->stop if $fake; }
$fake->call('POST', '/_fake/lease', { ttl_seconds => $ttl });
my $node = $fake->new_node('stopflush',
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '1h'\nmax_prepared_transactions = 2\n");

sub sq { return $node->safe_psql($_[1] // 'postgres', $_[0]); }
sub poll_until { return FakeApi::poll_until($node, @_); }
sub reqs_for { my $re = shift; return grep { $_->{path} =~ $re } @{ $fake->requests }; }

sub wait_for
{
	my ($cond, $seconds) = @_;
	my $deadline = time + $seconds;
	while (time < $deadline)
	{
		return 1 if $cond->();
		usleep(10_000);
	}
	return 0;
}

sub keeper_pid { return sq(q{SELECT coalesce(max(pid), 0) FROM pg_stat_activity WHERE backend_type = 'anthropic_env keeper'}); }

like(poll_until(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('anthropic_env keeper', 'anthropic_env poller')}, '2', 10),
	qr/^2$/, 'the keeper and the poller run');
my $env = sq(q{SELECT id FROM anthropic.env_create('{"name": "stop-flush", "config": {"type": "self_hosted"}}')});
sq("SELECT anthropic.serve('$env')");
my $w = $fake->call('POST', "/_fake/environments/$env/work", {})->{id};
is(sq("SELECT work_id FROM anthropic.work_claim('$env', '5s')"), $w, 'the item is taken');
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w'", 'ready', 3), 'ready', 'and ready again, held');

$fake->clear_requests;
ok(wait_for(sub { scalar grep { ($_->{status} // 0) == 200 } reqs_for(qr{/work/\Q$w\E/heartbeat$}) }, $ttl), 'a beat succeeds');
usleep(300_000);
my $hb_db = sq("SELECT last_heartbeat FROM anthropic.held_work WHERE work_id = '$w'");
ok($hb_db ne '', "held_work has the heartbeat ($hb_db)");

# A table lock that outlives the shutdown; plain SELECTs (load_held) pass.
sq("BEGIN; LOCK TABLE anthropic.held_work IN EXCLUSIVE MODE; PREPARE TRANSACTION 'hold'");
$fake->clear_requests;
my $kpid = keeper_pid();
kill 'TERM', $kpid;
ok(wait_for(sub { scalar grep { ($_->{status} // 0) == 200 } reqs_for(qr{/work/\Q$w\E/heartbeat$}) }, 1),
	'the last round\'s beat is answered');
ok(wait_for(sub { sq("SELECT count(*) FROM pg_stat_activity WHERE pid = $kpid AND wait_event_type = 'Lock'") eq '1' }, 1),
	'its flush waits for the lock');
$node->stop('fast');    # the second SIGTERM
$fake->clear_requests;
$node->start;
sq("COMMIT PREPARED 'hold'");

ok(wait_for(sub { scalar grep { defined $_->{status} } reqs_for(qr{/work/\Q$w\E/heartbeat$}) }, 5), 'the keeper beats again');
usleep(1_500_000);
my @b = map { $_->{status} } grep { defined $_->{status} } reqs_for(qr{/work/\Q$w\E/heartbeat$});
diag("beats after the restart: @b");
like(sq("SELECT state FROM anthropic.work_get('$env', '$w')"), qr/^(starting|active)$/, 'the server still runs the item');
is(sq("SELECT state || '|' || coalesce(error, '') FROM anthropic.leases WHERE work_id = '$w'"), 'ready|',
	'the item is still held: the last round\'s beat was its own');

$node->stop;
done_testing();
