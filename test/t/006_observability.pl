# Observability: request statistics across backends, wait events, request
# logs without secrets, and the worker's warnings.
use strict;
use warnings;

use Digest::MD5 qw(md5_hex);
use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $fake = FakeApi->start;
$fake->bulk(5);
my $node = $fake->new_node('obs',
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '1h'\n");
my @ids = split /\n/, $node->safe_psql('postgres', 'SELECT id FROM anthropic.env_list() ORDER BY id');
is(scalar @ids, 5, 'five environments to fetch');

# Concurrent backends add up exactly: pgbench, 4 clients x 50 calls.
$node->safe_psql('postgres', 'SELECT anthropic.request_stats_reset()');
my $script = "$PostgreSQL::Test::Utils::tmp_check/env_get.sql";
open my $fh, '>', $script or die;
print $fh "\\set i random(1, 5)\n";
print $fh "SELECT (anthropic.env_get((ARRAY['" . join("','", @ids) . "'])[:i])).id;\n";
close $fh;
$node->command_ok([ 'pgbench', '-n', '-c', '4', '-j', '2', '-t', '50', '-f', $script,
	'-h', $node->host, '-p', $node->port, 'postgres' ], 'pgbench ran 200 env_get calls');
is($node->safe_psql('postgres', q{SELECT calls || ' ' || errors_4xx + errors_5xx + errors_transport FROM anthropic.request_stats WHERE endpoint = 'env_get'}),
	'200 0', 'the calls of 4 concurrent backends add up exactly');
my $served = scalar grep { $_->{path} =~ m{^/v1/environments/env_} } @{ $fake->requests };
cmp_ok($served, '>=', 200, 'the fake saw them all');

# The wait event is visible from a second session during a slow call.
$fake->fault({ path_regex => '^/v1/environments/env_', delay_ms => 3000, times => 1 });
my $bg = $node->background_psql('postgres');
$bg->query_until(qr/go/, "\\echo go\nSELECT anthropic.env_get('$ids[0]');\n");
my $wait = '';
for (1 .. 100)
{
	$wait = $node->safe_psql('postgres',
		q{SELECT wait_event_type || '/' || wait_event FROM pg_stat_activity WHERE query LIKE 'SELECT anthropic.env_get(%'});
	last if $wait ne '';
	usleep(50_000);
}
# Extensions may name their wait events from PostgreSQL 17 on.
is($wait, $node->pg_version >= 17 ? 'Extension/AnthropicApiRequest' : 'Extension/Extension',
	'a slow call shows the extension\'s wait event');
$bg->quit;

# anthropic.log_requests: one line per attempt, no key, no body.
$node->append_conf('postgresql.conf', "anthropic.log_requests = on\n");
$node->reload;
usleep(300_000);
my $marker = md5_hex('anthropic_env body marker');
my $logpos = -s $node->logfile;
$node->safe_psql('postgres', q{SELECT anthropic.env_create(jsonb_build_object('name', md5('anthropic_env body marker')))});
$fake->fault({ path_regex => '^/v1/environments/env_', status => 500, times => 1, headers => { 'retry-after-ms' => '1' } });
$node->safe_psql('postgres', "SELECT anthropic.env_get('$ids[1]')");
my $log = substr(slurp_file($node->logfile), $logpos);
like($log, qr{anthropic_env request POST /v1/environments: status 200, attempt 1, [\d.]+ ms, request id req_\w+},
	'a request is logged with method, path, status, attempt, time and request id');
like($log, qr{anthropic_env request GET /v1/environments/env_\w+: status 500, attempt 1}, 'a failed attempt is logged');
like($log, qr{anthropic_env request GET /v1/environments/env_\w+: status 200, attempt 2}, 'and its retry');
unlike($log, qr/\Q$marker\E/, 'no request body in the log');
unlike($log, qr/x-api-key|anthropic-version:/i, 'no header in the log');

# The worker logs failed syncs at WARNING.
$fake->fault({ method => 'GET', path_regex => '^/v1/environments$', status => 500, times => -1,
	headers => { 'retry-after-ms' => '1' } });
$logpos = -s $node->logfile;
$node->safe_psql('postgres', 'SELECT anthropic.sync_now()');
my $warned = 0;
for (1 .. 100)
{
	$warned = substr(slurp_file($node->logfile), $logpos) =~ /WARNING:  anthropic_env sync failed: 58000: Anthropic API request failed: Internal server error/;
	last if $warned;
	usleep(100_000);
}
ok($warned, 'the worker logs a failed sync at WARNING');
$fake->clear_faults;

$node->stop;
unlike(slurp_file($node->logfile), qr/\Q$FakeApi::KEY\E/, 'the server log does not contain the key');

# Without preloading no request is sent (110_key_paths.pl), and the view
# still answers: with nothing, since nothing was sent.
my $plain = $fake->new_node('plain', preload => '');
my ($rc, $out, $err) = $plain->psql('postgres', "SELECT anthropic.env_get('$ids[0]')");
like($err, qr/must be loaded through shared_preload_libraries/, 'without preload a call is refused');
is($plain->safe_psql('postgres', "SELECT count(*) FROM anthropic.request_stats WHERE calls > 0"),
	'0', 'and request_stats shows no call');
$plain->stop;

done_testing();
