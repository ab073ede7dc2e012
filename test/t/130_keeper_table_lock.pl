# The lease keeper under a table lock on its own tables (from review): a
# session holding ACCESS EXCLUSIVE on anthropic.held_work (as VACUUM FULL
# or LOCK TABLE would) holds no beat, and no exit: the keeper's writes give
# up after lock_timeout (0.5 s) and are made again once the lock is gone,
# its NOTIFYs included.  Against the fake with a 4 s TTL (beats every 2 s).
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $fake = FakeApi->start;
END { local $?; $fake->stop if $fake; }
$fake->call('POST', '/_fake/lease', { ttl_seconds => 4 });
my $node = $fake->new_node('tablelock',
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '1h'\n");

sub sq { return $node->safe_psql('postgres', $_[0]); }
sub poll_until { return FakeApi::poll_until($node, @_); }

like(poll_until(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('anthropic_env keeper', 'anthropic_env poller')}, '2', 10),
	qr/^2$/, 'the keeper and the poller run');
my $env = sq(q{SELECT id FROM anthropic.env_create('{"name": "locked", "config": {"type": "self_hosted"}}')});
sq("SELECT anthropic.serve('$env')");
my $w = $fake->call('POST', "/_fake/environments/$env/work", {})->{id};
is(sq("SELECT work_id FROM anthropic.work_claim('$env', '5s')"), $w, 'an item is taken');
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w'", 'ready', 3), 'ready', 'and held');

my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN anthropic_work');
my $locker = $node->background_psql('postgres', on_error_stop => 0);
$locker->query_safe('BEGIN; LOCK TABLE anthropic.held_work IN ACCESS EXCLUSIVE MODE');
$fake->clear_requests;
# Lost while the table is locked: its NOTIFY cannot be sent yet.
$fake->call('POST', "/_fake/environments/$env/work/$w/expire", {});
sleep 6;
my @beats = grep { ($_->{status} // 0) == 200 } $fake->requests_for(qr{/work/\Q$w\E/heartbeat$});
my @lost = grep { ($_->{status} // 0) == 412 } $fake->requests_for(qr{/work/\Q$w\E/heartbeat$});
ok(@lost >= 1, 'the keeper kept beating while the table was locked (it met the expired lease)');
is(sq("SELECT state FROM anthropic.leases WHERE work_id = '$w'"), 'lost', 'and marked the item lost');
my $log = slurp_file($node->logfile);
like($log, qr/WARNING:  anthropic_env lease keeper could not record its leases: canceling statement due to lock timeout/,
	'its write gave up after lock_timeout, with a WARNING');
$locker->query_safe('COMMIT');
$locker->quit;
is(poll_until("SELECT state FROM anthropic.held_work WHERE work_id = '$w'", 'lost', 5), 'lost',
	'once the lock is gone the write is made');
my $notes = '';
for (1 .. 40)
{
	$notes = $listener->query_safe('SELECT 1');
	last if $listener->{stderr} =~ /\Q$w\E/ || $notes =~ /\Q$w\E/;
	usleep(100_000);
}
like($listener->{stderr} . $notes, qr/Asynchronous notification "anthropic_work" with payload "\Q$w\E"/,
	'and the NOTIFY that was rolled back with it is sent');
$listener->quit;

# SIGTERM while the table is locked again: the exit is not held either.
my $w2 = $fake->call('POST', "/_fake/environments/$env/work", {})->{id};
is(sq("SELECT work_id FROM anthropic.work_claim('$env', '5s')"), $w2, 'another item is taken');
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w2'", 'ready', 3), 'ready', 'and held');
$locker = $node->background_psql('postgres', on_error_stop => 0);
$locker->query_safe('BEGIN; LOCK TABLE anthropic.held_work IN ACCESS EXCLUSIVE MODE');
my $kpid = sq(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'anthropic_env keeper'});
my $t0 = time;
sq("SELECT pg_terminate_backend($kpid)");
poll_until("SELECT count(*) FROM pg_stat_activity WHERE pid = $kpid", '0', 5);
my $took = time - $t0;
cmp_ok($took, '<', 1.0, sprintf('SIGTERM ends the keeper though its table is locked (%.0f ms)', $took * 1000));
$locker->query_safe('COMMIT');
$locker->quit;
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w2'", 'ready', 5), 'ready',
	'after its restart the item is still held');

$node->stop;
done_testing();
