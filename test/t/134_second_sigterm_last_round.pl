# Review 14b: a second SIGTERM while keeper_stop()'s last round is in flight.
# The last round's beat reaches the server (which applies it), the second
# SIGTERM cancels the wait, keeper_stop()'s PG_CATCH sets stop_flushed and
# FATALs, so keeper_exit() records nothing: the lease keeps its old
# last_heartbeat and beat_maybe_acted is never set.  The restarted keeper's
# next beat meets the heartbeat the last round set (412) and, with nothing
# telling it that beat was its own, drops the item as lost.
# Fixed first: keeper_exit() records the last round's beats as unanswered.
#
# Then found: the postmaster itself sends that second SIGTERM.  Its
# signal_child() kills the child and then the child's process group, which
# the child leads, so a fast shutdown cut the last round short whenever the
# keeper ran between the two kills.  Fixed: only the first SIGTERM cancels;
# the last round ends by its own 0.5 s bound.  Both shapes are sent here: the
# postmaster's (pid, then group, at once) and a later one to the group.
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $ttl = 8;
my $fake = FakeApi->start;
END { local $?; $fake->stop if $fake; }
$fake->call('POST', '/_fake/lease', { ttl_seconds => $ttl });
my $node = $fake->new_node('secondterm',
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '1h'\n");

sub sq { return $node->safe_psql($_[1] // 'postgres', $_[0]); }
sub poll_until { return FakeApi::poll_until($node, @_); }

sub keeper_pid { return sq(q{SELECT coalesce(max(pid), 0) FROM pg_stat_activity WHERE backend_type = 'anthropic_env keeper'}); }

like(poll_until(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('anthropic_env keeper', 'anthropic_env poller')}, '2', 10),
	qr/^2$/, 'the keeper and the poller run');

my $env = sq(q{SELECT id FROM anthropic.env_create('{"name": "second-term", "config": {"type": "self_hosted"}}')});
sq("SELECT anthropic.serve('$env')");
my $w = $fake->call('POST', "/_fake/environments/$env/work", {})->{id};
is(sq("SELECT work_id FROM anthropic.work_claim('$env', '5s')"), $w, 'the item is taken');
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w'", 'ready', 3), 'ready', 'and ready again, held');

# Right after a beat is answered the keeper is idle, no beat in flight.
$fake->clear_requests;
ok(FakeApi::wait_for(sub { scalar grep { ($_->{status} // 0) == 200 } $fake->requests_for(qr{/work/\Q$w\E/heartbeat$}) }, $ttl), 'a beat succeeds');
usleep(300_000);

# Every beat is answered 300 ms late, so a last round's beat is in flight
# when the second SIGTERM comes.
sub shutdown_with_two_sigterms
{
	my ($label, $gap_us) = @_;
	$fake->fault({ method => 'POST', path_regex => "/work/$w/heartbeat\$", delay_ms => 300, times => -1 });
	$fake->clear_requests;
	my $kpid = keeper_pid();
	my $logpos = -s $node->logfile;
	my $t_term = time;
	kill 'TERM', $kpid;
	if ($gap_us)
	{
		ok(FakeApi::wait_for(sub { scalar $fake->requests_for(qr{/work/\Q$w\E/heartbeat$}) }, 1), "$label: the last round sends a beat");
		usleep($gap_us);
	}
	kill 'TERM', -$kpid;
	ok(FakeApi::wait_for(sub { sq("SELECT count(*) FROM pg_stat_activity WHERE pid = $kpid") eq '0' }, 3), "$label: the keeper ends");
	my $took = time - $t_term;
	cmp_ok($took, '<', 1.0, sprintf("$label: within 1 s of the first SIGTERM (%.0f ms)", $took * 1000));
	$fake->clear_faults;
	my $tail = substr(slurp_file($node->logfile), $logpos);
	like($tail, qr/LOG:  anthropic_env lease keeper beat 1 of 1 held leases on its way out, 1 answered/,
		"$label: the second SIGTERM did not cut the last round short")
	  or diag("server log from the first SIGTERM:\n$tail");
	unlike($tail, qr/last round was cut short/, "$label: and the keeper does not say it was");
	unlike($tail, qr/PANIC|TRAP|terminated by signal/, "$label: no crash");

	# The postmaster starts the keeper again after 1 s; shared memory kept the lease.
	ok(FakeApi::wait_for(sub { my $p = keeper_pid(); $p ne '0' && $p ne $kpid }, 5), "$label: the keeper is back");
	$fake->clear_requests;
	ok(FakeApi::wait_for(sub { scalar grep { defined $_->{status} } $fake->requests_for(qr{/work/\Q$w\E/heartbeat$}) }, $ttl),
		"$label: it beats again");
	usleep(500_000);
	my @b = map { $_->{status} } grep { defined $_->{status} } $fake->requests_for(qr{/work/\Q$w\E/heartbeat$});
	is($b[0], 200, "$label: its first beat after the restart is answered 200 (the last round's beat was recorded)")
	  or diag("beats after the restart: @b");
	is(sq("SELECT state || '|' || coalesce(error, '') FROM anthropic.leases WHERE work_id = '$w'"), 'ready|',
		"$label: the item is still held");
}

# What signal_child() does: the pid, then its process group, at once.
shutdown_with_two_sigterms('as the postmaster sends them', 0);
# A second one 80 ms into the last round, while its beat is held.
$fake->clear_requests;
ok(FakeApi::wait_for(sub { scalar grep { ($_->{status} // 0) == 200 } $fake->requests_for(qr{/work/\Q$w\E/heartbeat$}) }, $ttl), 'a beat succeeds');
usleep(300_000);
shutdown_with_two_sigterms('80 ms apart', 80_000);

$node->stop;
done_testing();
