# Rule 6 while a round of beats is long: a dead session's item is ready
# again within 2 s.
#
# A round lasts as long as its slowest wave of calls.  Each beat is one
# attempt of at most 1 s, and at most 64 are in flight, so with 200 held
# leases whose beats all hang a round takes about 3 s.  The keeper looked
# for dead sessions only between rounds, so an item whose session ended as
# such a round began waited out the whole round (a limit the README stated).
# Fixed: the check also runs from the transport's waits, every 250 ms.
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

# The TTL leaves room: the interval is 15 s, each attempt 1 s, a failed
# beat goes out again 1 s after its round, and a lease is lost only 30 s
# after it was taken (its beats never succeed), about 6 s after the checks
# below end.
my $ttl = 30;
my $per_env = 100;
my $fake = FakeApi->start;
END { local $?; $fake->stop if $fake; }
$fake->call('POST', '/_fake/lease', { ttl_seconds => $ttl });
my $node = $fake->new_node('longround',
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '1h'\n");

sub sq { return $node->safe_psql($_[1] // 'postgres', $_[0]); }
sub poll_until { return FakeApi::poll_until($node, @_); }

is(FakeApi::workers_run($node), '2', 'the keeper and the poller run');

my $t_serve = time;
my @envs = map { FakeApi::new_env($node, "long-round-$_") } 1 .. 2;
for my $env (@envs)
{
	$fake->enqueue($env) for 1 .. $per_env + 1;
	sq("SELECT anthropic.serve('$env', $per_env)");
}
my $held = 2 * $per_env;
is(poll_until("SELECT count(*) FROM anthropic.leases WHERE state = 'ready'", $held, 30), $held,
	"$held items held ready, $per_env per environment");

# Every beat hangs past its 1 s attempt from now on.
$fake->fault({ method => 'POST', path_regex => '/heartbeat$', delay_ms => 5000, times => -1 });

my $t_ready = time;
diag(sprintf('%d items taken in %.1f s', $held, $t_ready - $t_serve));

# The first beats fall due 15 s after the items were taken.  Once they fail,
# a round sends every beat again, three or four waves of 64: a round lasts
# 3 to 4 s.
$fake->clear_requests;
ok(FakeApi::wait_for(sub { scalar($fake->requests_for(qr{/heartbeat$})) >= $held }, 20),
	'every held lease\'s beat hangs');
my @first = $fake->requests_for(qr{/heartbeat$});
diag(sprintf('the first hung beat %.1f s after the items were held, the %dth %.1f s after', $first[0]{time} - $t_ready,
	scalar(@first), $first[-1]{time} - $t_ready));
usleep(1_500_000);

# Three sessions claim an item each and end at different points of the
# rounds.  Between rounds only, an item would wait up to a whole round.
my @took;
for my $trial (1 .. 3)
{
	my $claimer = $node->background_psql('postgres');
	$claimer->query_until(qr/claimed/, "SELECT work_id AS w FROM anthropic.work_claim('$envs[$trial % 2]', '2s') \\gset\n\\echo claimed\n");
	my $w = sq("SELECT work_id FROM anthropic.leases WHERE state = 'claimed'");
	like($w, qr/^\S+$/, "session $trial claims an item");
	usleep(200_000 + int(rand(500_000)));
	my $t_end = time;
	$claimer->quit;
	my $state = poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w'", 'ready', 5);
	push @took, time - $t_end;
	is($state, 'ready', "session $trial: its item is ready again, the lease still held");
}
my @t = map { $_->{time} } $fake->requests_for(qr{/heartbeat$});
my $waves = 1;
for my $i (1 .. $#t) { $waves++ if $t[$i] - $t[ $i - 1 ] > 0.5; }
diag(sprintf('%d beats in %d waves over %.1f s; items ready again after %s s',
	scalar(@t), $waves, $t[-1] - $t[0], join(', ', map { sprintf('%.2f', $_) } @took)));
my $worst = (sort { $b <=> $a } @took)[0];
cmp_ok($worst, '<', 2.0, sprintf('each within the 2 s of rule 6, worst %.2f s', $worst));
# Between rounds only, three ends at random points of 3 to 4 s rounds would
# rarely all come within 1.5 s; the check every 250 ms, plus the polling
# here, always does.
cmp_ok($worst, '<', 1.5, 'each within 1.5 s: the check does not wait for the round');

$fake->clear_faults;
is(poll_until("SELECT count(*) FROM anthropic.leases WHERE state = 'lost'", '0', 1), '0', 'no lease was lost');
my $log = slurp_file($node->logfile);
unlike($log, qr/PANIC|TRAP|terminated by signal/, 'no crash');

$node->stop;
done_testing();
