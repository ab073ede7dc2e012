# Review 14b: "after a restart, loaded leases are resumed: the local TTL
# rule is skipped until their first beat has been answered".  send_acts()
# clears l->resumed after any outcome of the first beat, a 503 or a timeout
# included.  Here the last round's beat is held by the server (applied, its
# answer lost), the restart is shorter than the TTL but ends past the local
# last_beat_at + TTL, and the first beat after the restart meets one 503:
# the next round's local TTL rule then drops a lease the server still runs
# (the second beat would reconcile the 412 of the lost last-round beat).
# Fixed: until a beat is answered, the TTL rule counts from the restart.
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
my $node = $fake->new_node('resumed503',
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '1h'\n");

sub sq { return $node->safe_psql($_[1] // 'postgres', $_[0]); }
sub poll_until { return FakeApi::poll_until($node, @_); }

like(poll_until(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('anthropic_env keeper', 'anthropic_env poller')}, '2', 10),
	qr/^2$/, 'the keeper and the poller run');

my $env = sq(q{SELECT id FROM anthropic.env_create('{"name": "resumed-503", "config": {"type": "self_hosted"}}')});
sq("SELECT anthropic.serve('$env')");
my $w = $fake->call('POST', "/_fake/environments/$env/work", {})->{id};
is(sq("SELECT work_id FROM anthropic.work_claim('$env', '5s')"), $w, 'the item is taken');
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w'", 'ready', 3), 'ready', 'and ready again, held');

$fake->clear_requests;
ok(FakeApi::wait_for(sub { scalar grep { ($_->{status} // 0) == 200 } $fake->requests_for(qr{/work/\Q$w\E/heartbeat$}) }, $ttl), 'a beat succeeds');
my $t_beat = time;

# The last round's beat is applied by the server, its answer comes too late.
FakeApi::sleep_until($t_beat + 3.5);
$fake->fault({ method => 'POST', path_regex => "/work/$w/heartbeat\$", delay_ms => 1500, times => 1 });
my $t_down = time;
$node->stop('fast');
ok(scalar($fake->requests_for(qr{/work/\Q$w\E/heartbeat$})) >= 2, 'the last round sent a beat');
FakeApi::sleep_until($t_beat + 10.8);
$fake->clear_faults;
# The first beat after the restart meets one transient failure.
$fake->fault({ method => 'POST', path_regex => "/work/$w/heartbeat\$", status => 503, times => 1 });
$fake->clear_requests;
$node->start;
my $down = time - $t_down;
diag(sprintf('server down for %.1f s (TTL %d s), from %.1f s after the last answered beat', $down, $ttl, $t_down - $t_beat));

ok(FakeApi::wait_for(sub { scalar grep { defined $_->{status} } $fake->requests_for(qr{/work/\Q$w\E/heartbeat$}) }, 4), 'the keeper beats');
usleep(2_500_000);
my @b = map { $_->{status} } grep { defined $_->{status} } $fake->requests_for(qr{/work/\Q$w\E/heartbeat$});
diag("beats after the restart: @b");
is(sq("SELECT state FROM anthropic.work_get('$env', '$w')") =~ /^(starting|active)$/ ? 'held' : 'not', 'held',
	'the server still has the item running');
is(sq("SELECT state || '|' || coalesce(error, '') FROM anthropic.leases WHERE work_id = '$w'"), 'ready|',
	'a failed first beat does not hand the lease to the local TTL rule');

$node->stop;
done_testing();
