# Review 14c: after a restart longer than the TTL (the last round's beat
# included), the lease is surely gone at the server, but a resumed lease is
# READY with its old heartbeat and the TTL rule now counts from the restart
# (Max(last_beat_at, loaded_at)): while the first beats fail (503), sessions
# take the item for up to a whole TTL though no beat confirmed the lease
# (try_claim() does not look at resumed).
# Fixed: a lease read back after a restart is offered once a beat is answered.
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $ttl = 4;
my $fake = FakeApi->start;
END { local $?; $fake->stop if $fake; }
$fake->call('POST', '/_fake/lease', { ttl_seconds => $ttl });
my $node = $fake->new_node('resumedclaim',
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '1h'\n");

sub sq { return $node->safe_psql($_[1] // 'postgres', $_[0]); }
sub poll_until { return FakeApi::poll_until($node, @_); }

like(poll_until(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('anthropic_env keeper', 'anthropic_env poller')}, '2', 10),
	qr/^2$/, 'the keeper and the poller run');
my $env = sq(q{SELECT id FROM anthropic.env_create('{"name": "resumed-claim", "config": {"type": "self_hosted"}}')});
sq("SELECT anthropic.serve('$env')");
my $w = $fake->call('POST', "/_fake/environments/$env/work", {})->{id};
is(sq("SELECT work_id FROM anthropic.work_claim('$env', '5s')"), $w, 'the item is taken');
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w'", 'ready', 3), 'ready', 'and ready again, held');
usleep(1_000_000);

$node->stop('fast');
sleep($ttl + 3);        # down for longer than the TTL: the lease is gone
$fake->fault({ method => 'POST', path_regex => "/work/$w/heartbeat\$", status => 503, times => -1 });
$fake->clear_requests;
$node->start;
ok(FakeApi::wait_for(sub { scalar grep { defined $_->{status} } $fake->requests_for(qr{/work/\Q$w\E/heartbeat$}) }, 5), 'the first beat fails');
is(sq("SELECT count(*) FROM anthropic.work_claim('$env', '1s')"), '0',
	'no session takes an item whose lease no beat confirmed since the restart');

$node->stop;
done_testing();
