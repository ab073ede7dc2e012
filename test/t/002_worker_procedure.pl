# The README's PL/pgSQL worker procedure, run exactly as printed there,
# against the fake: it handles queued items like the SDK's worker does.
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $readme = slurp_file("$ENV{TESTDIR}/../../README.md");
my ($block) = $readme =~ /<!-- worker-procedure:begin -->\s*```sql\n(.*?)```\s*<!-- worker-procedure:end -->/s;
ok(defined $block, 'the README holds the worker procedure');

my $fake = FakeApi->start;
my $node = $fake->new_node('worker');
$node->safe_psql('postgres', $block);

my $env = $node->safe_psql('postgres',
	q{SELECT id FROM anthropic.env_create('{"name": "sql-worker", "config": {"type": "self_hosted"}}')});
my @items = map { $fake->call('POST', "/_fake/environments/$env/work", {})->{id} } 1 .. 2;

# While the worker long-polls an empty queue, its transaction holds no xid.
$fake->clear_requests;
my $bg = $node->background_psql('postgres');
$bg->query_until(qr/started/, q{\echo started
CALL run_environment_worker('} . $env . q{', 'db-worker-1', max_items => 2, session_seconds => 2, ttl_seconds => 2);
\echo done
});

my $done = 0;
for (1 .. 300)
{
	$done = $node->safe_psql('postgres',
		"SELECT count(*) FROM worker_log WHERE event = 'stopped'");
	last if $done == 2;
	select(undef, undef, undef, 0.1);
}
is($done, 2, 'both items were handled and stopped');

for my $id (@items)
{
	my $state = $node->safe_psql('postgres', "SELECT state FROM anthropic.work_get('$env', '$id')");
	is($state, 'stopped', "item ends stopped");
}

my @log = @{ $fake->requests };
my @polls = grep { $_->{path} =~ m{/work/poll$} } @log;
ok(@polls >= 2, 'the worker polled');
ok(!(grep { ($_->{headers}{'anthropic-worker-id'} // '') ne 'db-worker-1' } @polls),
	'every poll carries the worker id');
ok(!(grep { ($_->{params}{block_ms} // '') ne '999' } @polls), 'every poll long-polls with block_ms=999');

for my $id (@items)
{
	my @beats = grep { $_->{path} =~ m{/work/\Q$id\E/heartbeat$} } @log;
	ok(@beats >= 2, 'several heartbeats for one item');
	is($beats[0]{params}{expected_last_heartbeat}, 'NO_HEARTBEAT', 'the first beat claims the lease');
	ok(!(grep { $_->{status} != 200 } @beats), 'every later beat echoed the previous last_heartbeat (no 412)');
	ok(!(grep { ($_->{params}{expected_last_heartbeat} // '') eq 'NO_HEARTBEAT' } @beats[ 1 .. $#beats ]),
		'later beats do not reclaim');
	my @acks = grep { $_->{path} =~ m{/work/\Q$id\E/ack$} } @log;
	is(scalar @acks, 1, 'acked once');
	my @stops = grep { $_->{path} =~ m{/work/\Q$id\E/stop$} } @log;
	is($stops[0]{body}, '{"force":true}', 'stopped with force');
}

# A session shorter than the beat interval ends on time: with the server's
# default lease (beats 30 s apart) two 1-second items take seconds, not a
# minute.
my @short = map { $fake->call('POST', "/_fake/environments/$env/work", {})->{id} } 1 .. 2;
my $t0 = time;
$node->safe_psql('postgres',
	"CALL run_environment_worker('$env', 'db-worker-1', max_items => 2, session_seconds => 1)");
my $took = time - $t0;
cmp_ok($took, '<', 12, sprintf('two 1-second sessions with a 30 s beat interval took %.1f s', $took));
is($node->safe_psql('postgres', "SELECT state FROM anthropic.work_get('$env', '$_')"), 'stopped',
	'a short session ends stopped') for @short;

# A lost lease (412 on the second beat) releases the item without stopping it.
my $lost = $fake->call('POST', "/_fake/environments/$env/work", {})->{id};
$fake->fault({
	path_regex => "/work/$lost/heartbeat\$", skip => 1, times => 1, status => 412,
	body => { type => 'error', error => { type => 'invalid_request_error',
		message => 'Heartbeat precondition failed: expected x, actual was y',
		details => { error_code => 'heartbeat_precondition_failed',
			current_state => { state => 'active', last_heartbeat => 'y', lease_extended => JSON::PP::false, ttl_seconds => 2 } } } } });
$bg->query_until(qr/started2/, q{\echo started2
CALL run_environment_worker('} . $env . q{', 'db-worker-1', max_items => 1, session_seconds => 5, ttl_seconds => 2);
});
my $event = '';
for (1 .. 300)
{
	$event = $node->safe_psql('postgres', "SELECT event FROM worker_log WHERE work_id = '$lost' ORDER BY at DESC LIMIT 1");
	last if $event eq 'lease lost';
	select(undef, undef, undef, 0.1);
}
is($event, 'lease lost', 'a 412 is taken as a lost lease');
is($node->safe_psql('postgres', "SELECT state FROM anthropic.work_get('$env', '$lost')"),
	'active', 'a lost item is released, not stopped');

# During a long poll on an empty queue, no transaction id is held.
$bg->query_until(qr/started3/, q{\echo started3
CALL run_environment_worker('} . $env . q{', 'db-worker-1', max_idle_polls => 2);
});
my $seen = '';
for (1 .. 100)
{
	$seen = $node->safe_psql('postgres',
		q{SELECT coalesce(backend_xid::text, 'none') FROM pg_stat_activity WHERE wait_event_type = 'Extension' AND query LIKE 'CALL run_environment_worker%'});
	last if $seen ne '';
	select(undef, undef, undef, 0.05);
}
is($seen, 'none', 'the long poll runs without an open transaction id');
$bg->quit;

done_testing();
