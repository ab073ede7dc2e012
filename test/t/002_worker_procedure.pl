# The README's worker procedure, run exactly as printed there, against the
# fake with a 2 s lease TTL and work that takes 3 s per item: the lease
# keeper beats while the procedure works, so no item is lost, each result
# commits with its work_finish(), and each item ends stopped remotely.
# A lost lease drops that item's result.
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $readme = slurp_file("$ENV{TESTDIR}/../../README.md");
my ($block) = $readme =~ /<!-- worker-procedure:begin -->\s*```sql\n(.*?)```\s*<!-- worker-procedure:end -->/s;
ok(defined $block, 'the README holds the worker procedure');
ok(($block =~ tr/\n//) <= 30, 'and it is short');

my $fake = FakeApi->start;
$fake->call('POST', '/_fake/lease', { ttl_seconds => 2 });
my $node = $fake->new_node('worker',
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '1h'\n");
$node->safe_psql('postgres', $block);

my $env = $node->safe_psql('postgres',
	q{SELECT id FROM anthropic.env_create('{"name": "sql-worker", "config": {"type": "self_hosted"}}')});
$node->safe_psql('postgres', "SELECT anthropic.serve('$env', worker_id => 'db-worker-1')");
my @items = map { $fake->call('POST', "/_fake/environments/$env/work", {})->{id} } 1 .. 2;

my $bg = $node->background_psql('postgres', on_error_stop => 0);
$bg->query_until(qr/started/, "\\echo started\nCALL run_environment_worker('$env', max_items => 2, work_seconds => 3);\n\\echo done\n");

my $done = 0;
for (1 .. 300)
{
	$done = $node->safe_psql('postgres', 'SELECT count(*) FROM worker_results');
	last if $done == 2;
	select(undef, undef, undef, 0.1);
}
is($done, 2, 'both items were worked on for longer than the TTL and their results committed');
for my $id (@items)
{
	my $state = '';
	for (1 .. 50)
	{
		$state = $node->safe_psql('postgres', "SELECT state FROM anthropic.work_get('$env', '$id')");
		last if $state eq 'stopped';
		select(undef, undef, undef, 0.1);
	}
	is($state, 'stopped', 'the item ends stopped remotely');
	my @beats = grep { $_->{path} =~ m{/work/\Q$id\E/heartbeat$} } @{ $fake->requests };
	ok(@beats >= 3, 'the keeper beat it while the procedure worked');
	ok(!(grep { $_->{status} != 200 } @beats), 'and no beat failed');
}

# A lease lost during the work: the result is dropped, the item released.
my $lost = $fake->call('POST', "/_fake/environments/$env/work", {})->{id};
$bg->query_until(qr/started2/, "\\echo started2\nCALL run_environment_worker('$env', max_items => 1, work_seconds => 4);\n\\echo done2\n");
my $state = '';
for (1 .. 100)
{
	$state = $node->safe_psql('postgres', "SELECT state FROM anthropic.leases WHERE work_id = '$lost'");
	last if $state eq 'claimed';
	select(undef, undef, undef, 0.1);
}
is($state, 'claimed', 'the procedure claimed the third item');
$fake->call('POST', "/_fake/environments/$env/work/$lost/expire", {});
my $out = $bg->query_until(qr/done2/, '');
is($node->safe_psql('postgres', "SELECT count(*) FROM worker_results WHERE work_id = '$lost'"), '0',
	'a lost lease drops the result');
is($node->safe_psql('postgres', "SELECT state FROM anthropic.leases WHERE work_id = '$lost'"), 'lost', 'the item is lost');
ok(!(grep { $_->{path} =~ m{/work/\Q$lost\E/stop$} } @{ $fake->requests }), 'and released, not stopped');
$bg->quit;

done_testing();
