# The lease keeper's last review defects (issue 14): a clean restart right
# after an unanswered beat, or while a beat or the NO_HEARTBEAT claim is in
# flight, loses no item; unserve() releases the environment's ready items;
# the keeper's functions refuse to run outside anthropic.sync_database.
# Against the fake with an 8 s lease TTL (beats every 4 s), so that a
# restart fits inside one lease.
use strict;
use warnings;

use FakeApi;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use List::Util qw(max);
use Time::HiRes qw(time usleep);

my $fake = FakeApi->start;
END { local $?; $fake->stop if $fake; }
$fake->call('POST', '/_fake/lease', { ttl_seconds => 8 });
my $node = $fake->new_node('restart',
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '1h'\n");
$node->safe_psql('postgres', $FakeApi::T_TRY);

sub sq { return $node->safe_psql($_[1] // 'postgres', $_[0]); }
sub poll_until { return FakeApi::poll_until($node, @_); }
sub lease { return sq("SELECT state FROM anthropic.leases WHERE work_id = '$_[0]'"); }
sub fired { my $id = shift; my ($r) = grep { $_->{id} eq $id } @{ $fake->call('GET', '/_fake/faults')->{data} }; return $r ? $r->{fired} : 0; }

# Waits until $cond returns true, at most $seconds; returns whether it did.

# An item held ready: a one-shot session claims it and ends, so it is
# ready again within 2 s with its lease held.
sub held_item
{
	my ($env) = @_;
	my $w = $fake->enqueue($env);
	is(sq("SELECT work_id FROM anthropic.work_claim('$env', '5s')"), $w, "an item of $env is taken");
	is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w'", 'ready', 3), 'ready', 'and ready again');
	return $w;
}

like(poll_until(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('anthropic_env keeper', 'anthropic_env poller')}, '2', 10),
	qr/^2$/, 'the keeper and the poller run');

# 4. Outside anthropic.sync_database the keeper's functions raise 55000:
# the lease table is cluster-wide, the secrets are not, so a claim there
# would hand out an item without its secret.
my $env4 = FakeApi::new_env($node, 'two-databases');
sq("SELECT anthropic.serve('$env4')");
my $w4 = held_item($env4);
sq('CREATE DATABASE other');
sq('CREATE EXTENSION anthropic_env', 'other');
sq($FakeApi::T_TRY, 'other');
like(sq("SELECT t_try(\$\$SELECT anthropic.serve('$env4')\$\$)", 'other'),
	qr/^err\|55000\|the anthropic_env lease keeper does not run in database "other"\|anthropic.sync_database is "postgres"\.$/,
	'serve() in another database raises 55000');
like(sq("SELECT t_try(\$\$SELECT anthropic.unserve('$env4')::text\$\$)", 'other'),
	qr/^err\|55000\|the anthropic_env lease keeper does not run in database "other"/, 'so does unserve()');
like(sq("SELECT t_try(\$\$SELECT secret FROM anthropic.work_claim('$env4')\$\$)", 'other'),
	qr/^err\|55000\|the anthropic_env lease keeper does not run in database "other"/,
	'work_claim() there raises 55000 instead of handing out an item without its secret');
for my $f ('work_finish', 'work_release', 'work_should_stop')
{
	like(sq("SELECT t_try(\$\$SELECT anthropic.$f('$w4')::text\$\$)", 'other'), qr/^err\|55000\|/, "$f() there raises 55000");
}
my ($rc, $out, $err) = $node->psql('other', "\\set VERBOSITY verbose\nSELECT * FROM anthropic.work_claim('$env4');");
like($err, qr/ERROR:  55000: the anthropic_env lease keeper does not run in database "other"/, 'in PostgreSQL style');
like($err, qr/HINT:  Call the keeper's functions in the database named by anthropic\.sync_database\./, 'the hint names anthropic.sync_database');
is(lease($w4), 'ready', 'the item stays ready in the keeper database');
like(sq("SELECT count(*) || '|' || bool_and(secret IS NOT NULL) FROM anthropic.work_claim('$env4')"), qr/^1\|true$/,
	'and is handed out there, with its secret');
sq("SELECT anthropic.unserve('$env4')");

# 1. A clean restart right after an unanswered beat: the server applied the
# beat and the answer was lost, so the lease now carries a heartbeat the
# keeper never saw.  Every beat's answer is dropped until the server is
# down, so the keeper cannot reconcile before the restart; after it, the
# first beat's 412 showing that lease is the lost beat's success.
my $env1 = FakeApi::new_env($node, 'unanswered');
sq("SELECT anthropic.serve('$env1')");
my $w1 = held_item($env1);
my $f1 = $fake->fault({ method => 'POST', path_regex => "/work/$w1/heartbeat\$", close => JSON::PP::true,
	after => JSON::PP::true, times => -1 })->{id};
ok(FakeApi::wait_for(sub { fired($f1) >= 1 }, 6), 'a beat was applied and its answer dropped');
$node->stop('fast');
$fake->clear_faults;
$fake->clear_requests;
$node->start;
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w1'", 'ready', 5), 'ready',
	'after the restart the item is held, not lost');
ok(FakeApi::wait_for(sub { grep { ($_->{status} // 0) == 200 } $fake->requests_for(qr{/work/\Q$w1\E/heartbeat$}) }, 6),
	'and its beats succeed again');
my @b1 = $fake->requests_for(qr{/work/\Q$w1\E/heartbeat$});
is($b1[0]{status} // 0, 412, 'the first beat after the restart met the lease the lost beat set (412)');
is(lease($w1), 'ready', 'still held');
# psql, not safe_psql: without the column (before the fix) the rest still runs.
is(($node->psql('postgres', "SELECT beat_unanswered FROM anthropic.held_work WHERE work_id = '$w1'"))[1], 'f',
	'the recorded flag is cleared');

# The same with the beat in flight when SIGTERM comes (the fake holds it
# for 2 s): the keeper drops it and, on its way out, beats the lease once
# more; that beat's heartbeat is what the restart reads back.
my $env5 = FakeApi::new_env($node, 'in-flight');
sq("SELECT anthropic.serve('$env5')");
my $w5 = held_item($env5);
$fake->clear_requests;
$fake->fault({ method => 'POST', path_regex => "/work/$w5/heartbeat\$", delay_ms => 2000, times => 1 });
ok(FakeApi::wait_for(sub { scalar $fake->requests_for(qr{/work/\Q$w5\E/heartbeat$}) }, 6), 'a beat is in flight');
my $t5 = time;
$node->stop('fast');
my @last5 = $fake->requests_for(qr{/work/\Q$w5\E/heartbeat$});
ok(scalar(@last5) >= 2 && ($last5[-1]{status} // 0) == 200, 'on its way out the keeper beat the lease once more (200)')
  or diag(explain([ map { $_->{status} } @last5 ]));
$fake->clear_requests;
usleep(max(0, 2300_000 - (time - $t5) * 1e6));
$node->start;
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w5'", 'ready', 5), 'ready',
	'after the restart the item whose beat was in flight is held');
ok(FakeApi::wait_for(sub { grep { ($_->{status} // 0) == 200 } $fake->requests_for(qr{/work/\Q$w5\E/heartbeat$}) }, 6),
	'and its beats succeed again');
is(lease($w5), 'ready', 'not lost');
my @b5 = $fake->requests_for(qr{/work/\Q$w5\E/heartbeat$});
# 200 when the last beat's answer was recorded; a 412 (reconciled: the
# item is still held, as checked above) when that answer came too late on a
# loaded machine and the beat was recorded as unanswered.
like($b5[0]{status} // 0, qr/^(200|412)$/, 'its first beat after the restart echoes the last beat (200) or meets it (412, reconciled)');
$fake->clear_faults;
is(lease($w1), 'ready', 'the first item is still held too');

# 2. The NO_HEARTBEAT claim in flight at shutdown: the item was acked, its
# claim hangs, the server goes down.  It was stored at the ack, so the
# restart reads it back and the keeper claims it again; whichever of the
# two claims lands first, the item ends up held with its secret.
my $env2 = FakeApi::new_env($node, 'claim-in-flight');
sq("SELECT anthropic.serve('$env2', prefetch => 1)");
$fake->clear_requests;
$fake->fault({ method => 'POST', path_regex => "/environments/$env2/work/[^/]+/heartbeat\$", delay_ms => 2500, times => 1 });
my $w2 = $fake->enqueue($env2);
ok(FakeApi::wait_for(sub { scalar $fake->requests_for(qr{/work/\Q$w2\E/heartbeat$}) }, 6), 'the claim is in flight');
ok(scalar($fake->requests_for(qr{/work/\Q$w2\E/ack$})), 'after the ack');
is(sq("SELECT (last_heartbeat IS NULL)::text || '|' || state FROM anthropic.held_work WHERE work_id = '$w2'"), 'true|ready',
	'the item was stored at the ack, with no heartbeat yet');
is(sq("SELECT count(*) FROM anthropic.work_claim('$env2')"), '0', 'no session can take it before its claim is confirmed');
$node->stop('fast');
$fake->clear_requests;
sleep 3;
$node->start;
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w2'", 'ready', 5), 'ready',
	'after the restart the item is held, ready');
ok(FakeApi::wait_for(sub { grep { ($_->{status} // 0) == 200 } $fake->requests_for(qr{/work/\Q$w2\E/heartbeat$}) }, 8),
	'its lease is beaten');
is(sq("SELECT work_id || '|' || (secret IS NOT NULL) FROM anthropic.work_claim('$env2', '2s')"), "$w2|true",
	'a session gets it with its secret');
is(sq("SELECT state FROM anthropic.work_get('$env2', '$w2')"), 'active', 'the server shows it active, not orphaned');
sq("SELECT anthropic.unserve('$env2')");

# 3. unserve(): ready items are released (shown lost, NOTIFY, no more
# beats), a claimed one is beaten until its session lets it go, and the
# environment is no longer polled.
my $env3 = FakeApi::new_env($node, 'unserved');
sq("SELECT anthropic.serve('$env3')");
my $wa = $fake->enqueue($env3);
my $holder = $node->background_psql('postgres', on_error_stop => 0);
$holder->query_until(qr/claimeda/, "SELECT work_id AS w FROM anthropic.work_claim('$env3', '5s') \\gset\n\\echo claimeda\n");
is(lease($wa), 'claimed', 'one item is claimed by a session');
my $wb = held_item($env3);
my $listener = $node->background_psql('postgres');
$listener->query_until(qr/listening/, "LISTEN anthropic_work;\n\\echo listening\n");
my $tu = time;
sq("SELECT anthropic.unserve('$env3')");
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$wb'", 'lost', 2.5), 'lost',
	sprintf('within %.1f s of unserve() the ready item is released', time - $tu));
like(sq("SELECT error FROM anthropic.leases WHERE work_id = '$wb'"), qr/no longer served/, 'and says why');
is(sq("SELECT state FROM anthropic.held_work WHERE work_id = '$wb'"), 'lost', 'recorded');
my $notes = $listener->query_until(qr/got/, "SELECT 1;\n\\echo got\n");
like($notes, qr/payload "\Q$wb\E"/, 'a NOTIFY announced it');
is(lease($wa), 'claimed', 'the claimed item stays claimed');
$fake->clear_requests;
my $wc = $fake->enqueue($env3);
sleep 5;
is(scalar($fake->requests_for(qr{/work/\Q$wb\E/heartbeat$})), 0, 'the released item is no longer beaten');
ok(scalar(grep { ($_->{status} // 0) == 200 } $fake->requests_for(qr{/work/\Q$wa\E/heartbeat$})) >= 1, 'the claimed one still is');
is(scalar($fake->requests_for(qr{/environments/\Q$env3\E/work/poll$})), 0, 'the environment is not polled');
is(sq("SELECT t_try(\$\$SELECT count(*) FROM anthropic.work_claim('$env3')\$\$)"),
	"err|55000|environment \"$env3\" is not served by this database|", 'no session can claim from it');
$holder->query_until(qr/releaseda/, "SELECT anthropic.work_release(:'w');\n\\echo releaseda\n");
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$wa'", 'lost', 2.5), 'lost',
	'once its session lets it go, the claimed item is released too');
$holder->quit;
$listener->quit;
is(sq("SELECT state FROM anthropic.work_get('$env3', '$wc')"), 'queued', 'an item queued after unserve() is left to others');

$node->stop;
done_testing();
