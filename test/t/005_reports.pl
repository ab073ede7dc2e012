# The README's reporting queries, run exactly as printed there, against a
# mirror filled by anthropic.sync() from a known remote state.
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $readme = slurp_file("$ENV{TESTDIR}/../../README.md");
my %report;
while ($readme =~ /<!-- report:([\w-]+) -->\s*```sql\n(.*?)```/sg)
{
	$report{$1} = $2;
}
is(join(',', sort keys %report), 'archived,by-type,depth,join', 'the README holds the four reports');

my $fake = FakeApi->start;
my $node = $fake->new_node('reports', conf => "anthropic.sync_work = on\n");

my %id;
for my $spec (
	[ 'limited-1', '{"type": "cloud", "networking": {"type": "limited", "allowed_hosts": ["a.example.com"]}}' ],
	[ 'limited-2', '{"type": "cloud", "networking": {"type": "limited"}}' ],
	[ 'open',      '{"type": "cloud"}' ],
	[ 'runner-a',  '{"type": "self_hosted"}' ],
	[ 'runner-b',  '{"type": "self_hosted"}' ],
	[ 'doomed',    '{"type": "cloud"}' ])
{
	my ($name, $config) = @$spec;
	$id{$name} = $node->safe_psql('postgres',
		qq{SELECT id FROM anthropic.env_create('{"name": "$name", "config": $config}')});
}
$node->safe_psql('postgres', "SELECT anthropic.env_archive('$id{'runner-b'}')");
$fake->call('POST', "/_fake/environments/$id{'runner-a'}/work", {}) for 1 .. 3;
$node->safe_psql('postgres', 'SELECT anthropic.sync()');
$node->safe_psql('postgres', "SELECT anthropic.env_delete('$id{doomed}')");
$node->safe_psql('postgres', "SELECT FROM anthropic.work_poll('$id{'runner-a'}', worker_id => 'w1')");
$node->safe_psql('postgres', 'SELECT anthropic.sync()');

# Both syncs ran within the same hour, or straddle two: compare what is stable.
is($node->safe_psql('postgres', $report{'by-type'}),
	"cloud|limited|2\ncloud|unrestricted|1\nself_hosted|-|2", 'environments by config type and networking');
is($node->safe_psql('postgres', $report{archived}), "active|4\narchived|1", 'archived versus active');

(my $depth_sql = $report{depth}) =~ s/;\s*$//;
my $depth = $node->safe_psql('postgres', "SELECT name, max(max_depth), max(max_pending), max(max_workers) FROM ($depth_sql) d GROUP BY name");
is($depth, 'runner-a|3|1|1', 'queue depth over time per environment');

$node->safe_psql('postgres', qq{
	CREATE TABLE projects (project text, environment_id text);
	INSERT INTO projects VALUES ('alpha', '$id{'limited-1'}'), ('beta', '$id{'runner-b'}'),
		('gamma', '$id{doomed}'), ('delta', 'env_never_existed');});
is($node->safe_psql('postgres', $report{join}),
	"alpha|limited-1|active\nbeta|runner-b|archived\ndelta||unknown\ngamma|doomed|deleted",
	'a user table joined against the mirror');

done_testing();
