# A cancel or statement_timeout during a slow answer ends the call within
# about 100 ms with SQLSTATE 57014, and the session's next call works.
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $fake = FakeApi->start;
my $node = $fake->new_node('cancel');
my $id = $node->safe_psql('postgres',
	q{SELECT id FROM anthropic.env_create('{"name": "slow"}')});
like($id, qr/^env_/, 'created an environment');

# pg_cancel_backend from a second session, during a 10 s delay.
$fake->fault({ path_regex => '^/v1/environments/', delay_ms => 10000, times => 1 });
my ($stdout, $stderr) = ('', '');
my $bg = IPC::Run::start(
	[ 'psql', '-XAtq', '-d', $node->connstr('postgres'), '-v', 'ON_ERROR_STOP=0', '-c',
	  qq{DO \$\$ BEGIN PERFORM anthropic.env_get('$id'); EXCEPTION WHEN query_canceled THEN
	      RAISE NOTICE 'canceled_at=% sqlstate=%', extract(epoch FROM clock_timestamp()), SQLSTATE; END \$\$;},
	  '-c', qq{SELECT 'next=' || name FROM anthropic.env_get('$id')} ],
	'>', \$stdout, '2>', \$stderr);

my $pid = '';
for (1 .. 200)
{
	$pid = $node->safe_psql('postgres',
		q{SELECT pid FROM pg_stat_activity WHERE query LIKE 'DO %env_get%' AND wait_event_type = 'Extension'});
	last if $pid ne '';
	select(undef, undef, undef, 0.05);
}
isnt($pid, '', 'the slow call waits on an Extension wait event');
# The target list is evaluated left to right: the time is taken first.
my ($sent_at) = split /\|/, $node->safe_psql('postgres',
	"SELECT extract(epoch FROM clock_timestamp()), pg_cancel_backend($pid)");
$bg->finish;
my ($canceled_at) = $stderr =~ /canceled_at=([\d.]+) sqlstate=57014/;
ok(defined $canceled_at, 'the call ended with SQLSTATE 57014') or diag $stderr;
my $latency_ms = ($canceled_at // 1e12) - $sent_at;
$latency_ms *= 1000;
cmp_ok($latency_ms, '<', 150, "cancel took effect within about 100 ms ($latency_ms ms)");
like($stdout, qr/^next=slow$/m, 'the next call in the same session works');

# statement_timeout, likewise.
$fake->fault({ path_regex => '^/v1/environments/', delay_ms => 10000, times => 1 });
my $t0 = time;
my ($rc, $out, $err) = $node->psql('postgres',
	"SET statement_timeout = '200ms'; SELECT anthropic.env_get('$id');");
my $elapsed = (time - $t0) * 1000;
like($err, qr/canceling statement due to statement timeout/, 'statement_timeout cancels the call');
cmp_ok($elapsed, '<', 200 + 400, "and returns promptly ($elapsed ms including psql start)");

# statement_timeout during a long poll that the fake holds: 57014 within
# about 100 ms of the timeout, measured inside the server.
my $senv = $node->safe_psql('postgres',
	q{SELECT id FROM anthropic.env_create('{"name": "poller", "config": {"type": "self_hosted"}}')});
$fake->fault({ path_regex => '/work/poll$', delay_ms => 5000, times => 1 });
($rc, $out, $err) = $node->psql('postgres', qq{SET statement_timeout = '200ms';
DO \$\$ DECLARE t0 timestamptz := statement_timestamp(); BEGIN
	PERFORM anthropic.work_poll('$senv', block_ms => 999);
EXCEPTION WHEN query_canceled THEN
	RAISE NOTICE 'poll_canceled_after=% sqlstate=%', extract(epoch FROM clock_timestamp() - t0) * 1000, SQLSTATE;
END \$\$;});
my ($poll_ms) = $err =~ /poll_canceled_after=([\d.]+) sqlstate=57014/;
ok(defined $poll_ms, 'statement_timeout ends a long poll with 57014') or diag $err;
cmp_ok($poll_ms // 1e9, '<', 300, "within about 100 ms of the 200 ms timeout ($poll_ms ms)");

# The key never shows up in pg_stat_activity.
my $acts = $node->safe_psql('postgres', 'SELECT string_agg(query, E\'\n\') FROM pg_stat_activity');
unlike($acts, qr/\Q$FakeApi::KEY\E/, 'pg_stat_activity does not show the key');

$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/\Q$FakeApi::KEY\E/, 'the server log does not contain the key');

done_testing();
