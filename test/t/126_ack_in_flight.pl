# Review of issue 14 (rule 7): the poller stored an item only once its ack
# had been answered (fixed: it is stored at the poll).  An ack still in flight when the poller goes (a
# restart of the poller alone, or a clean server restart) is carried out
# by the server after the poller is gone: the item is then acked
# ("starting") on the server, which never hands it out again, and the
# database holds no row of it, so nobody ever claims or beats it.  The ack
# is reconcilable (a repeated ack's 409 is checked by a GET, retry.c), so
# the item could be stored before its ack and acked again after the
# restart, as the NO_HEARTBEAT claim is.  Against the fake with an 8 s TTL.
# Fixed: the item is stored at the poll, and the keeper acks it again.
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
my $node = $fake->new_node('ackflight',
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '1h'\n");

sub sq { return $node->safe_psql($_[1] // 'postgres', $_[0]); }
sub poll_until { return FakeApi::poll_until($node, @_); }

is(FakeApi::workers_run($node), '2', 'the keeper and the poller run');

# 1. The poller alone is terminated while an ack is in flight.
my $env1 = FakeApi::new_env($node, 'ack-poller-restart');
$fake->clear_requests;
$fake->fault({ method => 'POST', path_regex => "/environments/$env1/work/[^/]+/ack\$", delay_ms => 2500, times => 1 });
sq("SELECT anthropic.serve('$env1', prefetch => 1)");
my $w1 = $fake->call('POST', "/_fake/environments/$env1/work", {})->{id};
ok(FakeApi::wait_for(sub { scalar $fake->requests_for(qr{/work/\Q$w1\E/ack$}) }, 6), 'the ack is in flight');
my $ppid = sq(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'anthropic_env poller'});
sq("SELECT pg_terminate_backend($ppid)");
ok(FakeApi::wait_for(sub { (sq("SELECT state FROM anthropic.work_get('$env1', '$w1')")) =~ /^(starting|active)$/ }, 5),
	'the server carried the ack out after the poller was gone');
ok(scalar($fake->requests_for(qr{/work/\Q$w1\E/ack$})) >= 2, 'and the keeper acked the item again (its 409 reconciled)');
is(FakeApi::workers_run($node), '2', 'the poller is back');
is(poll_until("SELECT coalesce((SELECT state FROM anthropic.leases WHERE work_id = '$w1'), 'not held')", 'ready', 8),
	'ready', 'the acked item is held by the database after the poller restarted');
is(sq("SELECT state FROM anthropic.work_get('$env1', '$w1')"), 'active', 'and its lease is claimed on the server');
is(sq("SELECT count(*) FROM anthropic.work_claim('$env1', '2s')"), '1', 'a session can take it');
sq("SELECT anthropic.unserve('$env1')");

# 2. The same at a clean server restart.
my $env2 = FakeApi::new_env($node, 'ack-server-restart');
$fake->clear_requests;
$fake->fault({ method => 'POST', path_regex => "/environments/$env2/work/[^/]+/ack\$", delay_ms => 2500, times => 1 });
sq("SELECT anthropic.serve('$env2', prefetch => 1)");
my $w2 = $fake->call('POST', "/_fake/environments/$env2/work", {})->{id};
ok(FakeApi::wait_for(sub { scalar $fake->requests_for(qr{/work/\Q$w2\E/ack$}) }, 6), 'an ack is in flight at shutdown');
$node->stop('fast');
sleep 3;
$node->start;
is(FakeApi::workers_run($node), '2', 'the keeper and the poller run again');
is(sq("SELECT state FROM anthropic.work_get('$env2', '$w2')") =~ /^(starting|active)$/ ? 'acked' : 'not acked', 'acked',
	'the server carried the ack out');
is(poll_until("SELECT coalesce((SELECT state FROM anthropic.leases WHERE work_id = '$w2'), 'not held')", 'ready', 8),
	'ready', 'after the restart the acked item is held by the database');
is(sq("SELECT count(*) FROM anthropic.work_claim('$env2', '2s')"), '1', 'a session can take it');

$node->stop;
done_testing();
