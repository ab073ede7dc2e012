# Review 14b: the poller's last write of a round (store_taken) fails after
# the item was acked and its NO_HEARTBEAT claim answered: here a table lock
# on held_work outlasts the poller's lock_timeout (500 ms).  poller_round()
# then returns without putting the item into the lease table.  The server
# leased the item to this database, which neither beats it nor hands it to
# a session, and its held_work row and secret stay behind (adopt_unconfirmed
# runs only when the poller starts).  Expected: the item is held (shown in
# anthropic.leases, claimable) once the lock is gone.
# Fixed: the items are held even when that last write fails.
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $fake = FakeApi->start;
END { local $?; $fake->stop if $fake; }
$fake->call('POST', '/_fake/lease', { ttl_seconds => 20 });
my $node = $fake->new_node('storetaken',
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '1h'\n");

sub sq { return $node->safe_psql($_[1] // 'postgres', $_[0]); }
sub poll_until { return FakeApi::poll_until($node, @_); }

like(poll_until(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('anthropic_env keeper', 'anthropic_env poller')}, '2', 10),
	qr/^2$/, 'the keeper and the poller run');

my $env = sq(q{SELECT id FROM anthropic.env_create('{"name": "store-taken", "config": {"type": "self_hosted"}}')});
# The claim's answer is held 1.5 s: the lock below lands between the ack's write and store_taken.
$fake->fault({ method => 'POST', path_regex => "/environments/$env/work/[^/]+/heartbeat\$", delay_ms => 1500, times => 1 });
$fake->clear_requests;
my $w = $fake->call('POST', "/_fake/environments/$env/work", {})->{id};
sq("SELECT anthropic.serve('$env', 1)");
ok(FakeApi::wait_for(sub { scalar $fake->requests_for(qr{/work/\Q$w\E/heartbeat$}) }, 6), 'the NO_HEARTBEAT claim is in flight');

my $locker = $node->background_psql('postgres');
$locker->query_safe('BEGIN; LOCK TABLE anthropic.held_work IN EXCLUSIVE MODE');
my $logpos = -s $node->logfile;
ok(FakeApi::wait_for(sub { scalar grep { ($_->{status} // 0) == 200 } $fake->requests_for(qr{/work/\Q$w\E/heartbeat$}) }, 4), 'the claim is answered');
usleep(1_200_000);
$locker->query_safe('COMMIT');
$locker->quit;
my $tail = substr(slurp_file($node->logfile), $logpos);
like($tail, qr/could not store the items it took/, 'the poller\'s write timed out on the lock');

is(poll_until("SELECT count(*) FROM anthropic.leases WHERE work_id = '$w'", '1', 4), '1',
	'the leased item is in the lease table once the lock is gone');
is(sq("SELECT count(*) FROM anthropic.work_claim('$env', '2s')"), '1', 'a session can take it');
my @b = grep { defined $_->{status} } $fake->requests_for(qr{/work/\Q$w\E/heartbeat$});
diag(scalar(@b) . ' beats of the item; held_work rows: ' . sq("SELECT count(*) FROM anthropic.held_work WHERE work_id = '$w'")
	  . ', secrets: ' . sq("SELECT count(*) FROM anthropic.work_secrets WHERE work_id = '$w'"));
is(sq("SELECT count(*) FROM anthropic.held_work h WHERE NOT EXISTS (SELECT 1 FROM anthropic.leases l WHERE l.work_id = h.work_id)"),
	'0', 'no held_work row (with its secret) outside the lease table');

$node->stop;
done_testing();
