# Review of issue 14 (rule 7): a session claims an item, calls work_finish()
# in a transaction that then stays open while it works (work_finish "takes
# effect when the transaction commits", and the README says such a session
# "never holds the keeper up").  The open transaction row-locks the item's
# held_work row, so every flush of the keeper skips it (SKIP LOCKED) and
# the row keeps the heartbeat it had when the finish was called.  The
# server then restarts cleanly, well inside the TTL: the session's
# transaction is rolled back, the item was claimed by a session that is
# gone, so it must be ready again with its lease held.  Against the fake
# with an 8 s TTL (beats every 4 s).
# Fixed: work_finish() now writes anthropic.finished_work and locks no
# held_work row.
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
my $node = $fake->new_node('finishopen',
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '1h'\n");

sub sq { return $node->safe_psql($_[1] // 'postgres', $_[0]); }
sub poll_until { return FakeApi::poll_until($node, @_); }
sub lease { return sq("SELECT state FROM anthropic.leases WHERE work_id = '$_[0]'"); }

like(poll_until(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('anthropic_env keeper', 'anthropic_env poller')}, '2', 10),
	qr/^2$/, 'the keeper and the poller run');

my $env = sq(q{SELECT id FROM anthropic.env_create('{"name": "finish-open", "config": {"type": "self_hosted"}}')});
sq("SELECT anthropic.serve('$env')");
my $w = $fake->call('POST', "/_fake/environments/$env/work", {})->{id};

my $holder = $node->background_psql('postgres', on_error_stop => 0);
$holder->query_until(qr/claimed/, "SELECT work_id AS w FROM anthropic.work_claim('$env', '5s') \\gset\n\\echo claimed\n");
is(lease($w), 'claimed', 'a session claims the item');
$holder->query_until(qr/finishing/, "BEGIN;\nSELECT anthropic.work_finish(:'w');\n\\echo finishing\n");

# The session works on in its transaction for a little more than one beat.
$fake->clear_requests;
ok(FakeApi::wait_for(sub { scalar grep { ($_->{status} // 0) == 200 } $fake->requests_for(qr{/work/\Q$w\E/heartbeat$}) }, 6),
	'the keeper beats the item while the finishing transaction is open');
usleep(300_000);
is(lease($w), 'claimed', 'still claimed');
my $stored = sq("SELECT last_heartbeat FROM anthropic.held_work WHERE work_id = '$w'");
my $remote = sq("SELECT raw->>'latest_heartbeat_at' FROM anthropic.work_get('$env', '$w')");
note("held_work.last_heartbeat $stored, server's $remote");
is($stored, $remote, 'held_work has the lease\'s current heartbeat (what a restart reads back)');

# A clean restart, far shorter than the TTL; the open transaction rolls back.
$node->stop('fast');
eval { $holder->quit; };
$fake->clear_requests;
$node->start;
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w'", 'ready', 5), 'ready',
	'after the restart the item is ready again (its session is gone, its finish rolled back)');
ok(FakeApi::wait_for(sub { grep { ($_->{status} // 0) == 200 } $fake->requests_for(qr{/work/\Q$w\E/heartbeat$}) }, 6),
	'and its beats succeed');
usleep(500_000);
my @b = $fake->requests_for(qr{/work/\Q$w\E/heartbeat$});
# 200, or a 412 reconciled as the last round's own beat when its answer
# came too late to be recorded (a loaded machine); the state check below
# says the item is held either way.
like($b[0]{status} // 0, qr/^(200|412)$/, 'the first beat after the restart echoed the current heartbeat, or met the last round\'s');
my $now = sq("SELECT state || '|' || coalesce(error, '') FROM anthropic.leases WHERE work_id = '$w'");
is($now, 'ready|', 'the item is held, not lost');
is(sq("SELECT count(*) FROM anthropic.work_claim('$env', '2s')"), '1', 'a session can take it again');

$node->stop;
done_testing();
