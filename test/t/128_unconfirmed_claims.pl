# Review of issue 14: two paths of the unconfirmed NO_HEARTBEAT claim that
# no test covered, both of which hold up (a passing test, kept for
# coverage): (1) the claim's answer is lost on every attempt with no
# restart, so the item is held with no heartbeat and the keeper's next
# NO_HEARTBEAT beat meets the lease the lost claim set (412, reconciled);
# (2) the poller alone is terminated while the claim is in flight, and the
# restarted poller adopts the row it stored at the ack.  Either way a
# waiting session gets the item with its secret, and it stays held.
# Against the fake with an 8 s TTL.
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
my $node = $fake->new_node('unconfirmed',
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '1h'\n");

sub sq { return $node->safe_psql($_[1] // 'postgres', $_[0]); }
sub poll_until { return FakeApi::poll_until($node, @_); }
sub fired { my $id = shift; my ($r) = grep { $_->{id} eq $id } @{ $fake->call('GET', '/_fake/faults')->{data} }; return $r ? $r->{fired} : 0; }

is(FakeApi::workers_run($node), '2', 'the keeper and the poller run');

# 1. Every attempt of the claim is applied and its answer dropped (the
# first attempt and anthropic.max_retries = 2 retries), no restart.
my $env1 = FakeApi::new_env($node, 'claim-unanswered');
sq("SELECT anthropic.serve('$env1')");
my $w1 = $fake->call('POST', "/_fake/environments/$env1/work", {})->{id};
my $f1 = $fake->fault({ method => 'POST', path_regex => "/work/$w1/heartbeat\$", close => JSON::PP::true,
	after => JSON::PP::true, times => 3 })->{id};
$fake->clear_requests;
is(sq("SELECT work_id || '|' || (secret IS NOT NULL) FROM anthropic.work_claim('$env1', '10s')"), "$w1|true",
	'a waiting session gets the item whose claim went unanswered, with its secret');
is(fired($f1), 3, 'every attempt of the claim lost its answer');
my @b1 = grep { defined $_->{status} && !$_->{fault} } $fake->requests_for(qr{/work/\Q$w1\E/heartbeat$});
is(($b1[0]{params}{expected_last_heartbeat} // '') . '|' . ($b1[0]{status} // 0), 'NO_HEARTBEAT|412',
	'the keeper sent the claim again and met the lease the lost one set');
ok(FakeApi::wait_for(sub { grep { ($_->{status} // 0) == 200 } $fake->requests_for(qr{/work/\Q$w1\E/heartbeat$}) }, 6),
	'then its beats succeed');
# The one-shot session has ended by now; the keeper's next round (rule 6:
# within 2 s) finds it gone.
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w1'", 'ready', 2.5), 'ready',
	'held (ready again once the one-shot session ended)');
is(sq("SELECT state FROM anthropic.work_get('$env1', '$w1')"), 'active', 'active on the server');
sq("SELECT anthropic.unserve('$env1')");

# 2. The poller alone goes while the claim is in flight.
my $env2 = FakeApi::new_env($node, 'claim-poller-restart');
$fake->clear_requests;
$fake->fault({ method => 'POST', path_regex => "/environments/$env2/work/[^/]+/heartbeat\$", delay_ms => 2500, times => 1 });
sq("SELECT anthropic.serve('$env2', prefetch => 1)");
my $w2 = $fake->call('POST', "/_fake/environments/$env2/work", {})->{id};
ok(FakeApi::wait_for(sub { scalar $fake->requests_for(qr{/work/\Q$w2\E/heartbeat$}) }, 6), 'the claim is in flight');
my $ppid = sq(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'anthropic_env poller'});
sq("SELECT pg_terminate_backend($ppid)");
is(FakeApi::workers_run($node), '2', 'the poller is back');
is(poll_until("SELECT coalesce((SELECT state FROM anthropic.leases WHERE work_id = '$w2'), 'not held')", 'ready', 6),
	'ready', 'the restarted poller adopted the item');
ok(FakeApi::wait_for(sub { grep { ($_->{status} // 0) == 200 } $fake->requests_for(qr{/work/\Q$w2\E/heartbeat$}) }, 8),
	'its lease is beaten');
is(sq("SELECT work_id || '|' || (secret IS NOT NULL) FROM anthropic.work_claim('$env2', '3s')"), "$w2|true",
	'a session gets it with its secret');
usleep(4_500_000);
is(sq("SELECT state || '|' || coalesce(error, '') FROM anthropic.leases WHERE work_id = '$w2'"), 'ready|',
	'it stays held (ready again once the one-shot session ended)');
is(sq("SELECT state FROM anthropic.work_get('$env2', '$w2')"), 'active', 'active on the server');

$node->stop;
done_testing();
