# A beat that never left does not move the window of an unanswered one.
#
# After a beat goes unanswered, the keeper takes a later 412 that shows a
# running lease as that beat's success, but only within a TTL of when it
# went out: later, whatever lease it set is over, and the 412 shows another
# worker's.  Every failed attempt moved that time, a refused connection
# included, though a request that never left cannot have set a lease.  So
# after an outage the window ran a TTL from its last refused attempt, and a
# restart took another worker's lease over.
# Fixed: only an attempt that may have reached the server moves it.
use strict;
use warnings;

use FakeApi;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $ttl = 8;
my $fake = FakeApi->start;
END { local $?; $fake->stop if $fake; }
$fake->call('POST', '/_fake/lease', { ttl_seconds => $ttl });
my $node = $fake->new_node('refusedwindow',
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '1h'\n");

sub sq { return $node->safe_psql($_[1] // 'postgres', $_[0]); }
sub poll_until { return FakeApi::poll_until($node, @_); }

is(FakeApi::workers_run($node), '2', 'the keeper and the poller run');
my $env = FakeApi::new_env($node, 'refused-window');
sq("SELECT anthropic.serve('$env')");
my $w = $fake->enqueue($env);
is(sq("SELECT work_id FROM anthropic.work_claim('$env', '5s')"), $w, 'the item is taken');
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w'", 'ready', 3), 'ready', 'and ready again, held');

# The next beat reaches the server, which carries it out and drops the
# connection: the keeper has no answer, and its lease runs a TTL from now.
# Its next attempt would come 1 s later; before that, every connection of
# the keeper's is refused.
$fake->clear_requests;
$fake->fault({ method => 'POST', path_regex => "/work/$w/heartbeat\$", close => JSON::PP::true, after => JSON::PP::true,
	times => 1 });
ok(FakeApi::wait_for(sub { scalar $fake->requests_for(qr{/work/\Q$w\E/heartbeat$}) }, $ttl), 'a beat is carried out, its answer lost');
my $t0 = ($fake->requests_for(qr{/work/\Q$w\E/heartbeat$}))[0]{time};
sq("ALTER SYSTEM SET anthropic.base_url = 'http://127.0.0.1:1'");
sq('SELECT pg_reload_conf()');
is(poll_until("SELECT beat_unanswered FROM anthropic.held_work WHERE work_id = '$w'", 't', 3), 't',
	'the keeper records it as unanswered')
  or diag(sq("SELECT row_to_json(h) FROM anthropic.held_work h WHERE work_id = '$w'") . "\n" .
	sq("SELECT row_to_json(l) FROM anthropic.leases l WHERE work_id = '$w'") . "\n" .
	join("\n", map { "$_->{time} " . ($_->{status} // '-') } $fake->requests_for(qr{/work/\Q$w\E/heartbeat$})));

# Until the TTL rule (no answered beat for a TTL, counted from the one
# before) would end the lease: three attempts refused.
FakeApi::sleep_until($t0 + 3.2);
like(sq("SELECT error FROM anthropic.leases WHERE work_id = '$w'"), qr/connect|transport/i,
	'its beats have failed to connect since');
is(scalar($fake->requests_for(qr{/work/\Q$w\E/heartbeat$})), 1, 'none of them reached the server');
my $at = sq("SELECT extract(epoch FROM beat_unanswered_at) FROM anthropic.held_work WHERE work_id = '$w'");
cmp_ok(abs($at - $t0), '<', 0.5,
	sprintf('the unanswered time is still that of the beat that went out (%+.2f s)', $at - $t0));

# A restart, during which the lease the unanswered beat set runs out and
# the server gives the item to another worker.  The window ends a TTL after
# that beat; a TTL after the last refused attempt, the 412 would be taken
# for that beat's and the other worker's lease taken over.
sq('ALTER SYSTEM RESET anthropic.base_url');
$node->stop('fast');
FakeApi::sleep_until($t0 + $ttl + 0.5);
$fake->call('POST', "/_fake/environments/$env/work/$w/expire", {});
$fake->clear_requests;
$node->start;
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w'", 'lost', 8), 'lost',
	'after the restart the 412 is taken as another worker\'s lease: the item is lost');
my @b = grep { defined $_->{status} } $fake->requests_for(qr{/work/\Q$w\E/heartbeat$});
is($b[0]{status} // 0, 412, 'the first beat after the restart met the other lease (412)');
is(scalar(grep { ($_->{status} // 0) == 200 } @b), 0, 'and no beat took the other worker\'s lease over');

$node->stop;
done_testing();
