# Review of issue 14 (rule 4): the server asks to stop an item nobody holds;
# the keeper force-stops it at once.  After that the item is done, but it
# stays "stop_requested" for ever: done_at is never set, so flush_leases()
# never frees its slot nor deletes its held_work row and its secret (only
# finished and lost items are forgotten, after 10 minutes).  Each stop the
# server asks for thus keeps a slot of the 1,024 and a secret in
# work_secrets for good; the view keeps saying the keeper still has to
# stop it.  (The slot leak itself needs 10 minutes to observe; this test
# checks the state it follows from.)  Against the fake with an 8 s TTL.
# Fixed: once force-stopped, the item is finished (done_at set) and goes
# after the horizon.
use strict;
use warnings;

use FakeApi;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $fake = FakeApi->start;
END { local $?; $fake->stop if $fake; }
$fake->call('POST', '/_fake/lease', { ttl_seconds => 8 });
my $node = $fake->new_node('stopped',
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '1h'\n");

sub sq { return $node->safe_psql($_[1] // 'postgres', $_[0]); }
sub poll_until { return FakeApi::poll_until($node, @_); }

like(poll_until(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('anthropic_env keeper', 'anthropic_env poller')}, '2', 10),
	qr/^2$/, 'the keeper and the poller run');

my $env = sq(q{SELECT id FROM anthropic.env_create('{"name": "stopped", "config": {"type": "self_hosted"}}')});
sq("SELECT anthropic.serve('$env')");
my $w = $fake->call('POST', "/_fake/environments/$env/work", {})->{id};
is(sq("SELECT work_id FROM anthropic.work_claim('$env', '5s')"), $w, 'the item is taken');
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w'", 'ready', 3), 'ready', 'and ready again, held');

# The server asks to stop it (a stop without force: "stopping").
sq("SELECT 1 FROM anthropic.work_stop('$env', '$w')");
is(poll_until("SELECT (stop_sent_at IS NOT NULL)::text FROM anthropic.leases WHERE work_id = '$w'", 'true', 8), 'true',
	'at its next beat the keeper sees the stop request and force-stops the item');
is(sq("SELECT state FROM anthropic.work_get('$env', '$w')"), 'stopped', 'the server has it stopped');
usleep(1_500_000);
isnt(sq("SELECT state FROM anthropic.leases WHERE work_id = '$w'"), 'stop_requested',
	'once stopped, the item no longer shows a stop the keeper still owes');
is(sq("SELECT (done_at IS NOT NULL)::text FROM anthropic.held_work WHERE work_id = '$w'"), 'true',
	'its record is terminal (done_at), so its slot, row and secret go after the horizon like other done items');

$node->stop;
done_testing();
