# Review of issue 14 (rule 7: "after a clean server restart shorter than
# the TTL ... no item is lost: beats resume with the stored
# last_heartbeat").  The keeper beats at ttl/2 and sends nothing on its way
# out, so a restart that begins just before a beat is due has only half a
# TTL left: here a 10 s TTL (beats every 5 s), the server down for about
# 6.5 s, starting 4 s after the last beat.  The restart is shorter than the
# TTL by over 3 s, yet the item is lost.  (A last round of beats on
# SIGTERM, which fits in the 1 s a SIGTERM may take, would keep it.)
# Fixed: on SIGTERM the keeper sends a last round of beats, and after a
# restart the first beat, not the local clock, decides.
use strict;
use warnings;

use FakeApi;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $ttl = 10;
my $fake = FakeApi->start;
END { local $?; $fake->stop if $fake; }
$fake->call('POST', '/_fake/lease', { ttl_seconds => $ttl });
my $node = $fake->new_node('withinttl',
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '1h'\n");

sub sq { return $node->safe_psql($_[1] // 'postgres', $_[0]); }
sub poll_until { return FakeApi::poll_until($node, @_); }

like(poll_until(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('anthropic_env keeper', 'anthropic_env poller')}, '2', 10),
	qr/^2$/, 'the keeper and the poller run');

my $env = sq(q{SELECT id FROM anthropic.env_create('{"name": "within-ttl", "config": {"type": "self_hosted"}}')});
sq("SELECT anthropic.serve('$env')");
my $w = $fake->call('POST', "/_fake/environments/$env/work", {})->{id};
is(sq("SELECT work_id FROM anthropic.work_claim('$env', '5s')"), $w, 'the item is taken');
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w'", 'ready', 3), 'ready', 'and ready again, held');

# The moment a beat is answered.
$fake->clear_requests;
ok(FakeApi::wait_for(sub { scalar grep { ($_->{status} // 0) == 200 } $fake->requests_for(qr{/work/\Q$w\E/heartbeat$}) }, $ttl), 'a beat succeeds');
my $t_beat = time;
$fake->clear_requests;

FakeApi::sleep_until($t_beat + 4.0);
my $t_down = time;
my $logpos_down = -s $node->logfile;
$node->stop('fast');
FakeApi::sleep_until($t_beat + 10.8);
my @window = $fake->requests_for(qr{/work/\Q$w\E/heartbeat$});
my @last = grep { ($_->{status} // 0) == 200 } @window;
diag('beats answered 200 between the last regular beat and the restart: ' . scalar(@last));
my $downlog = substr(slurp_file($node->logfile), $logpos_down);
unless (@last)
{
	# What the next look at this needs: every beat the fake saw, and what
	# the server logged on its way down.
	diag(sprintf('beat at %+.2f s from the stop: %s', $_->{time} - $t_down, $_->{status} // 'no answer')) for @window;
	diag("server log from the stop:\n$downlog");
}
# Twice seen under the CI matrix's load, the last round was cut short a
# millisecond in: the postmaster signals the keeper and then its process
# group, and the second SIGTERM cancelled the round (test 134).
like($downlog, qr/LOG:  anthropic_env lease keeper beat 1 of 1 held leases on its way out, 1 answered/,
	'the keeper\'s last round beat the one lease and was answered')
  or diag("server log from the stop:\n$downlog");
$fake->clear_requests;
$node->start;
my $t_up = time;
my $down = $t_up - $t_down;
diag(sprintf('server down for %.1f s (TTL %d s), from %.1f s after the last beat', $down, $ttl, $t_down - $t_beat));
cmp_ok($down, '<', $ttl - 2, 'the restart is well shorter than the TTL');

ok(FakeApi::wait_for(sub { scalar grep { defined $_->{status} } $fake->requests_for(qr{/work/\Q$w\E/heartbeat$}) }, 4)
	  || sq("SELECT state FROM anthropic.leases WHERE work_id = '$w'") ne 'ready',
	'the keeper resumes');
usleep(500_000);
is(sq("SELECT state || '|' || coalesce(error, '') FROM anthropic.leases WHERE work_id = '$w'"), 'ready|',
	'after the restart the item is still held');
my @b = grep { defined $_->{status} } $fake->requests_for(qr{/work/\Q$w\E/heartbeat$});
# The first beat is a 200, or a 412 reconciled as the last round's own beat
# when that beat's answer came too late to be recorded (a loaded machine).
my $ext = FakeApi::wait_for(sub { scalar grep { ($_->{status} // 0) == 200 } $fake->requests_for(qr{/work/\Q$w\E/heartbeat$}) }, 7)
  ? 'extended' : 'none';
is($ext, 'extended', 'its lease was extended by a beat after the restart');
is(sq("SELECT count(*) FROM anthropic.work_claim('$env', '2s')"), '1', 'a session can take it');

# The last round is bounded: with every beat held 3 s by the server, a
# SIGTERM still ends the keeper within 1 s, and logs no failed write.
my $held = poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w'", 'ready', 3);
SKIP:
{
	skip 'the item was not held after the restart', 5 unless $held eq 'ready';
	pass('held again');
$fake->fault({ method => 'POST', path_regex => "/work/$w/heartbeat\$", delay_ms => 3000, times => -1 });
my $kpid = sq(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'anthropic_env keeper'});
my $logpos = -s $node->logfile;
my $t_term = time;
sq("SELECT pg_terminate_backend($kpid)");
ok(FakeApi::wait_for(sub { sq("SELECT count(*) FROM pg_stat_activity WHERE pid = $kpid") eq '0' }, 3), 'the keeper ends');
my $took = time - $t_term;
cmp_ok($took, '<', 1.0, sprintf('within 1 s of SIGTERM though the server holds every beat (%.0f ms)', $took * 1000));
my $tail = substr(slurp_file($node->logfile), $logpos);
unlike($tail, qr/WARNING:  anthropic_env lease keeper could not/, 'and logs no failed write on its way out');
like($tail, qr/terminating anthropic_env lease keeper due to administrator command/, 'but says why it ended');
$fake->clear_faults;
}

$node->stop;
done_testing();
