# Benchmark (not a test): one lease keeper holding 200 leases across 10
# environments at a 10 s TTL for 2 minutes.  Reports how many leases were
# lost and the median and maximum lag of a beat behind its schedule
# (interval max(1 s, min(ttl/2, 30 s)) = 5 s), measured from the times the
# fake received the beats.  Run it like a TAP file:
#   ANTHROPIC_ENV_CACHE=... scripts/test --pg 17 --only tap bench/keeper_leases.pl
# BENCH_SECONDS (default 120) shortens the run.
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $seconds = $ENV{BENCH_SECONDS} // 120;
my ($envs, $per_env, $ttl) = (10, 20, 10);

my $fake = FakeApi->start;
$fake->call('POST', '/_fake/lease', { ttl_seconds => $ttl });
my $node = $fake->new_node('bench',
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '1h'\n");

my @env;
for my $i (1 .. $envs)
{
	my $id = $node->safe_psql('postgres',
		qq{SELECT id FROM anthropic.env_create('{"name": "bench-$i", "config": {"type": "self_hosted"}}')});
	$fake->call('POST', "/_fake/environments/$id/work", {}) for 1 .. $per_env;
	push @env, $id;
}
$node->safe_psql('postgres', "SELECT anthropic.serve('$_', prefetch => $per_env)") for @env;

my $want = $envs * $per_env;
my $t0 = time;
my $held = 0;
while (time - $t0 < 120)
{
	$held = $node->safe_psql('postgres', q{SELECT count(*) FROM anthropic.leases WHERE state = 'ready'});
	last if $held == $want;
	usleep(200_000);
}
is($held, $want, "the keeper took $want items");
diag(sprintf('took %d items in %.1f s', $held, time - $t0));

$fake->clear_requests;
my $start = time;
sleep $seconds;
my $states = $node->safe_psql('postgres', q{SELECT state || ':' || count(*) FROM anthropic.leases GROUP BY state ORDER BY 1});
my @log = grep { $_->{path} =~ m{/work/[^/]+/heartbeat$} } @{ $fake->requests };

my (%times, @lag, $failed);
$failed = grep { ($_->{status} // 0) != 200 } @log;
push @{ $times{ $_->{path} } }, $_->{time} for @log;
for my $t (values %times)
{
	my @s = sort { $a <=> $b } @$t;
	push @lag, ($s[$_] - $s[ $_ - 1 ]) - $ttl / 2 for 1 .. $#s;
}
@lag = sort { $a <=> $b } @lag;
my $median = @lag ? $lag[ int(@lag / 2) ] : 0;
my $max = @lag ? $lag[-1] : 0;

is($states, "ready:$want", 'no lease was lost');
diag(sprintf('%d s, %d leases, %d environments, TTL %d s: %d beats (%d failed), states %s',
	$seconds, $want, $envs, $ttl, scalar(@log), $failed, $states));
diag(sprintf('beat lag behind schedule: median %.0f ms, max %.0f ms (negative: early)', $median * 1000, $max * 1000));

$node->stop;
done_testing();
