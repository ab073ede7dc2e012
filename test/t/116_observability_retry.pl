# Observability of retries and batches (issue 13, rule 7).
#   - A call whose first attempt gets a 503 (retry-after-ms: 300) and whose
#     second attempt the fake holds: while the fake holds the second
#     attempt, pg_stat_activity shows the extension's wait event (type
#     Extension; named AnthropicApiRequest from PostgreSQL 17 on), and the
#     call then returns the environment after two requests.
#   - env_get_many with concurrency 1 over 4 ids, each answer held 300 ms:
#     the statement takes 4 x 300 ms, but request_stats' max_ms and
#     mean_ms count from each request's send (about 300 ms), not from its
#     queueing (up to 1,200 ms).
use strict;
use warnings;

use FakeApi;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $fake = FakeApi->start;
my $node = $fake->new_node('obs_retry');
my $env = $node->safe_psql('postgres', q{SELECT id FROM anthropic.env_create('{"name": "obs-retry"}')});
like($env, qr/^env_/, 'created an environment');
my $pgmajor = $node->safe_psql('postgres', q{SELECT current_setting('server_version_num')::int / 10000});

# The second attempt, held by the fake.
$fake->clear_requests;
$fake->fault({ method => 'GET', path_regex => "^/v1/environments/$env\$", status => 503, times => 1,
	headers => { 'retry-after-ms' => '300' } });
$fake->fault({ method => 'GET', path_regex => "^/v1/environments/$env\$", delay_ms => 3000, times => 1 });
my ($out, $err) = ('', '');
my $h = IPC::Run::start(
	[ 'psql', '-XAtq', '-d', $node->connstr('postgres') . ' application_name=t113_retry',
	  '-c', "SELECT 'got=' || name FROM anthropic.env_get('$env')" ],
	'>', \$out, '2>', \$err);
my $seen = '';
my $deadline = time + 20;
while (time < $deadline)
{
	my @reqs = grep { $_->{path} eq "/v1/environments/$env" } @{ $fake->requests };
	if (@reqs == 2 && !defined $reqs[1]{status})
	{
		$seen = $node->safe_psql('postgres',
			q{SELECT wait_event_type || '/' || wait_event FROM pg_stat_activity WHERE application_name = 't113_retry'});
		last;
	}
	usleep(20_000);
}
if ($pgmajor >= 17)
{
	is($seen, 'Extension/AnthropicApiRequest', 'during the second attempt the backend shows the extension wait event');
}
else
{
	is($seen, 'Extension/Extension', 'during the second attempt the backend shows the Extension wait event');
}
$h->finish;
like($out, qr/^got=obs-retry$/m, 'the retried call returned the environment') or diag $err;
is(scalar(grep { $_->{path} eq "/v1/environments/$env" } @{ $fake->requests }), 2, 'after two requests');

# Batch latency counts from the send.
my @ids = map {
	$node->safe_psql('postgres', qq{SELECT id FROM anthropic.env_create('{"name": "batch-$_"}')})
} 1 .. 4;
$fake->clear_faults;
$fake->fault({ method => 'GET', path_regex => '^/v1/environments/env_', delay_ms => 300, times => -1 });
$node->safe_psql('postgres', 'SELECT anthropic.request_stats_reset()');
my $array = 'ARRAY[' . join(',', map { "'$_'" } @ids) . ']';
my $t0 = time;
is($node->safe_psql('postgres', "SELECT count(*) FROM anthropic.env_get_many($array, 1)"), '4',
	'env_get_many fetched 4 environments one at a time');
my $total = (time - $t0) * 1000;
$fake->clear_faults;
cmp_ok($total, '>=', 1100, sprintf('the statement took about 4 x 300 ms (%.0f ms)', $total));
my ($calls, $max, $mean) = split /\|/, $node->safe_psql('postgres',
	q{SELECT calls, max_ms, mean_ms FROM anthropic.request_stats WHERE endpoint = 'env_get'});
is($calls, 4, 'request_stats counted 4 env_get requests');
cmp_ok($max, '<', 700, "max_ms counts from the send, not from the queueing ($max ms)");
cmp_ok($mean, '>=', 290, "mean_ms includes the 300 ms the server held each ($mean ms)");
cmp_ok($mean, '<', 600, "mean_ms excludes the queueing ($mean ms; with it, about 750)");

$node->stop;
done_testing();
