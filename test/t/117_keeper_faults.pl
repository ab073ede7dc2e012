# The lease keeper under faults (issue 14's review): a committed finish
# survives a restart, a hung or slowed beat holds no other, the keeper's own
# lost beat is no lost lease, a failing environment delays no other's poll
# and ack, healthcheck items are never announced, texts are cut at character
# boundaries, the limits raise, and the poller never takes more items than
# it can hold.  Against the fake with a 4 s lease TTL (beats every 2 s).
use strict;
use warnings;

use FakeApi;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $fake = FakeApi->start;
END { local $?; $fake->stop if $fake; }
$fake->call('POST', '/_fake/lease', { ttl_seconds => 4 });
my $node = $fake->new_node('faults',
	init => { extra => [ '--encoding=UTF8', '--locale=C' ] },
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '1h'\n");
$node->safe_psql('postgres', $FakeApi::T_TRY);

sub sq { return $node->safe_psql('postgres', $_[0]); }
sub poll_until { return FakeApi::poll_until($node, @_); }
sub lease { return sq("SELECT state FROM anthropic.leases WHERE work_id = '$_[0]'"); }
sub keeper_pid { return sq(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'anthropic_env keeper'}); }
sub log_count { my $re = shift; my @m = (slurp_file($node->logfile) =~ /$re/g); return scalar @m; }

like(poll_until(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('anthropic_env keeper', 'anthropic_env poller')}, '2', 10),
	qr/^2$/, 'the keeper and the poller run');
my $env = FakeApi::new_env($node, 'faults');
sq("SELECT anthropic.serve('$env')");

# work_claim(wait => '10s') ends on statement_timeout within the recheck.
my $t0 = time;
my ($trc, $tout, $terr) = $node->psql('postgres',
	"\\set VERBOSITY verbose\nSET statement_timeout = '300ms';\nSELECT count(*) FROM anthropic.work_claim('$env', '10s');");
like($terr, qr/ERROR:  57014: canceling statement due to statement timeout/, 'a waiting work_claim ends with 57014 on statement_timeout');
ok(time - $t0 < 1.5, sprintf('within %.0f ms', (time - $t0) * 1000));

# A consumer that does not fit is refused, not cut.
like(sq(qq{SELECT t_try(\$\$SELECT count(*) FROM anthropic.work_claim('$env', '0', repeat(chr(233), 40))\$\$)}),
	qr/^err\|22001\|consumer is too long/, 'an over-long consumer raises 22001');

# Texts from the API are cut at a character boundary.
my $wmb = $fake->enqueue($env, { data => { type => ("\x{e9}" x 40), id => 'sesn_mb' } });
is(sq("SELECT work_id FROM anthropic.work_claim('$env', '5s', 'mb') w, anthropic.work_finish(w.work_id)"), $wmb,
	'an item with a 80-byte data type is claimed and finished');
is(sq(q{SELECT data_type = repeat(chr(233), 31) FROM anthropic.leases WHERE data_id = 'sesn_mb'}), 't',
	'its data type is cut to whole characters (31 of them, 62 bytes)');

# A non-superuser reads no secret; the leases view holds none.
sq('CREATE ROLE plain LOGIN');
my ($rc, $out, $err) = $node->psql('postgres', 'SELECT * FROM anthropic.work_secrets', extra_params => [ '-U', 'plain' ]);
like($err, qr/permission denied/, 'a plain role cannot read work_secrets');
sq('GRANT USAGE ON SCHEMA anthropic TO plain');
($rc, $out, $err) = $node->psql('postgres', 'SELECT * FROM anthropic.work_secrets', extra_params => [ '-U', 'plain' ]);
like($err, qr/permission denied for table work_secrets/, 'not even with USAGE on the schema');
is(sq(q{SELECT count(*) FROM anthropic.leases l, anthropic.work_secrets s WHERE strpos(l::text, s.secret) > 0}), '0',
	'no row of the leases view contains a secret');
ok(sq('SELECT count(*) FROM anthropic.work_secrets') >= 1, '(there are secrets to look for)');

# 1. A committed finish is durable: a restart while its stop is pending
# does not make the item ready again.  The keeper is held with SIGSTOP so
# that it can neither flush nor stop before the server goes down.
my $wf = $fake->enqueue($env);
my $bg = $node->background_psql('postgres', on_error_stop => 0);
$bg->query_until(qr/claimedf/, "SELECT work_id AS w FROM anthropic.work_claim('$env', '5s') \\gset\n\\echo claimedf\n");
is(lease($wf), 'claimed', 'claimed by a session');
my $kpid = keeper_pid();
kill 'STOP', $kpid;
$bg->query_until(qr/committedf/, "BEGIN;\nCREATE TABLE result_f (v int);\nSELECT anthropic.work_finish(:'w');\nCOMMIT;\n\\echo committedf\n");
is(sq("SELECT count(*) FROM anthropic.finished_work WHERE work_id = '$wf'"), '1', 'the commit recorded the finish in finished_work');
$bg->quit;
my $stopper = IPC::Run::start([ 'pg_ctl', '-D', $node->data_dir, '-m', 'fast', '-w', 'stop' ], '>', \my $o1, '2>', \my $e1);
usleep(300_000);
kill 'CONT', $kpid;
$stopper->finish;
is(scalar($fake->requests_for(qr{/work/\Q$wf\E/stop$})), 0, 'the server went down before the stop was sent');
$node->_update_pid(0);
$node->start;
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$wf'", 'finished', 5), 'finished',
	'after the restart the item is finished, not ready');
is(sq("SELECT count(*) FROM anthropic.work_claim('$env', '1s')"), '0', 'no session is offered it again');
is(poll_until("SELECT state FROM anthropic.work_get('$env', '$wf')", 'stopped', 5), 'stopped', 'and the keeper stopped it');
is(sq(q{SELECT to_regclass('result_f') IS NOT NULL}), 't', 'the results were kept');

# A transaction left open after work_finish holds the keeper up in
# nothing: its row is written later, the other leases keep their beats.
my $envx = FakeApi::new_env($node, 'open-xact');
sq("SELECT anthropic.serve('$envx')");
my $wx = $fake->enqueue($envx);
my $wy = $fake->enqueue($envx);
my $bx = $node->background_psql('postgres', on_error_stop => 0);
$bx->query_until(qr/claimedx/, "SELECT work_id AS w FROM anthropic.work_claim('$envx', '5s') \\gset\n\\echo claimedx\n");
is(sq("SELECT work_id FROM anthropic.work_claim('$envx', '5s')"), $wy, 'a second item, ready once that session ended');
$bx->query_until(qr/pendingx/, "BEGIN;\nSELECT anthropic.work_finish(:'w');\n\\echo pendingx\n");
my $beat0 = sq("SELECT last_beat_at FROM anthropic.held_work WHERE work_id = '$wy'");
sleep 5;
ok(sq("SELECT last_beat_at > '$beat0' FROM anthropic.held_work WHERE work_id = '$wy'") eq 't',
	'while the finish is uncommitted the keeper still writes the other lease');
is(lease($wy), 'ready', 'and beats it');
$bx->query_until(qr/committedx/, "COMMIT;\n\\echo committedx\n");
$bx->quit;
is(poll_until("SELECT state || (stop_sent_at IS NOT NULL) FROM anthropic.leases WHERE work_id = '$wx'", 'finishedtrue', 3),
	'finishedtrue', 'the finish committed after 5 s took effect');
is(sq("SELECT state FROM anthropic.held_work WHERE work_id = '$wx'"), 'finished', 'and is recorded');

# An item whose ack fails is not claimed with NO_HEARTBEAT.
is(sq("SELECT w.work_id FROM anthropic.work_claim('$envx', '1s') w, anthropic.work_finish(w.work_id)"), $wy,
	'(the second item is finished too)');
my $wk = $fake->enqueue($envx);
$fake->fault({ method => 'POST', path_regex => "/work/$wk/ack\$", status => 400, times => -1 });
$fake->clear_requests;
is(sq("SELECT count(*) FROM anthropic.work_claim('$envx', '2s')"), '0', 'an item whose ack fails is not offered');
is(scalar($fake->requests_for(qr{/work/\Q$wk\E/heartbeat$})), 0, 'and its lease is never claimed');
like(slurp_file($node->logfile), qr/WARNING:  anthropic_env work poller: acknowledging work item "\Q$wk\E" for environment/,
	'the failed ack is logged at WARNING');
$fake->clear_faults;
sq("SELECT anthropic.unserve('$envx')");

# Each block below uses an environment of its own: a claim takes the
# oldest ready item of its environment.
# 3. The keeper's own lost beat: the server applies it and the answer is
# dropped; the next beat repeats the old heartbeat and gets 412 with the
# lease that beat set, which is success, not a lost lease.
my $envl = FakeApi::new_env($node, 'lostbeat');
sq("SELECT anthropic.serve('$envl')");
my $wl = $fake->enqueue($envl);
is(sq("SELECT work_id FROM anthropic.work_claim('$envl', '5s')"), $wl, 'an item for the lost-beat case');
poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$wl'", 'ready', 3);
$fake->clear_requests;
$fake->fault({ method => 'POST', path_regex => "/work/$wl/heartbeat\$", close => JSON::PP::true,
	after => JSON::PP::true, times => 1 });
sleep 6;
my @b = $fake->requests_for(qr{/work/\Q$wl\E/heartbeat$});
ok((grep { $_->{fault} } @b), 'a beat was applied and its answer dropped');
ok((grep { ($_->{status} // 0) == 412 } @b), 'the beat after it met the lease it set (412)');
is(lease($wl), 'ready', 'the lease is not lost');
ok(($b[-1]{status} // 0) == 200, 'and the beats after it succeed');

# 2. One environment's hung or slowed beats hold no other's, nor the
# dead-session check.
my $envh = FakeApi::new_env($node, 'hung');
sq("SELECT anthropic.serve('$envh')");
my $wh = $fake->enqueue($envh);
is(sq("SELECT work_id FROM anthropic.work_claim('$envh', '5s')"), $wh, 'an item of the hung environment');
my $envo = FakeApi::new_env($node, 'other');
sq("SELECT anthropic.serve('$envo')");
my $wo = $fake->enqueue($envo);
is(sq("SELECT work_id FROM anthropic.work_claim('$envo', '5s')"), $wo, 'an item of another environment');
poll_until("SELECT count(*) FROM anthropic.leases WHERE work_id IN ('$wh', '$wo') AND state = 'ready'", '2', 3);
$fake->fault({ method => 'POST', path_regex => "/environments/$envh/work/[^/]+/heartbeat\$", delay_ms => 20000, times => -1 });
$fake->clear_requests;
$t0 = time;
my $envd = FakeApi::new_env($node, 'dead');
sq("SELECT anthropic.serve('$envd')");
my $wd = $fake->enqueue($envd);
my $claimer = $node->background_psql('postgres');
$claimer->query_until(qr/claimedd/, "SELECT work_id FROM anthropic.work_claim('$envd', '5s');\n\\echo claimedd\n");
is(lease($wd), 'claimed', 'a session claims an item while the other beats hang');
$claimer->quit;
my $t1 = time;
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$wd'", 'ready', 2.5), 'ready',
	'the item of the ended session is ready again within 2 s meanwhile');
sleep(Max(0, 8 - (time - $t0)));
my @ok = map { $_->{time} } grep { ($_->{status} // 0) == 200 } $fake->requests_for(qr{/work/\Q$wo\E/heartbeat$});
my $gap = 0;
$gap = Max($gap, $ok[$_] - $ok[ $_ - 1 ]) for 1 .. $#ok;
ok(@ok >= 3, scalar(@ok) . ' beats of the other environment in 8 s');
ok($gap < 3.6, sprintf('its beats stayed on schedule (largest gap %.2f s: interval 2 s plus at most one 1 s attempt)', $gap));
is(lease($wo), 'ready', 'its lease is kept');
my @hung = $fake->requests_for(qr{/environments/\Q$envh\E/work/[^/]+/heartbeat$});
ok(@hung >= 2, scalar(@hung) . ' beats of the hung environment: each abandoned, then sent again');
is(lease($wh), 'lost', 'the hung lease is lost once no beat succeeded for the TTL');

# The same with a 429 asking to wait a minute.
$fake->clear_faults;
my $wr = $fake->enqueue($envh);
is(sq("SELECT work_id FROM anthropic.work_claim('$envh', '5s')"), $wr, 'a new item of that environment');
$fake->fault({ method => 'POST', path_regex => "/environments/$envh/work/[^/]+/heartbeat\$", status => 429,
	headers => { 'retry-after' => '60' }, times => -1 });
$fake->clear_requests;
sleep 6;
@ok = map { $_->{time} } grep { ($_->{status} // 0) == 200 } $fake->requests_for(qr{/work/\Q$wo\E/heartbeat$});
$gap = 0;
$gap = Max($gap, $ok[$_] - $ok[ $_ - 1 ]) for 1 .. $#ok;
ok(@ok >= 2 && $gap < 3.6, sprintf('a Retry-After of 60 s holds no other beat (%d beats, largest gap %.2f s)', scalar @ok, $gap));
is(lease($wo), 'ready', 'the other lease is kept');
$fake->clear_faults;
sq("SELECT anthropic.unserve('$envh')");

# 5. A failing environment (5xx) delays no other's poll and ack, nor does
# an idle one whose long polls block for 999 ms.  Sessions wait for the
# good and the idle environment first, so that their polls share rounds
# with the failing environment's.
my $envf = FakeApi::new_env($node, 'failing');
my $envg = FakeApi::new_env($node, 'good');
my $envi = FakeApi::new_env($node, 'idle');
sq("SELECT anthropic.serve('$envg')");
sq("SELECT anthropic.serve('$envi')");
$fake->fault({ method => 'GET', path_regex => "/environments/$envf/work/poll\$", status => 500, times => -1 });
my $idler = $node->background_psql('postgres', on_error_stop => 0);
$idler->query_until(qr/waiting/, "\\echo waiting\nSELECT count(*) FROM anthropic.work_claim('$envi', '15s');\n");
my $waiter = $node->background_psql('postgres');
$waiter->query_until(qr/waiting/, "\\echo waiting\nSELECT work_id FROM anthropic.work_claim('$envg', '15s');\n\\echo claimedg\n");
sq("SELECT anthropic.serve('$envf', prefetch => 1)");
sleep 3;
$fake->clear_requests;
my $te = time;
my $wa = $fake->enqueue($envg);
my $claimed = $waiter->query_until(qr/claimedg/, '');
like($claimed, qr/\Q$wa\E/, 'the good environment gets its item');
my ($ack) = $fake->requests_for(qr{/work/\Q$wa\E/ack$});
ok($ack && $ack->{time} - $te < 0.5,
	sprintf('acked %.0f ms after it was queued, not after the idle long poll', $ack ? ($ack->{time} - $te) * 1000 : -1));
ok((grep { $_->{path} =~ m{/environments/\Q$envi\E/work/poll$} } @{ $fake->requests }), '(the idle environment was being polled)');
$waiter->quit;
sq("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE '%work_claim(''$envi''%' AND pid <> pg_backend_pid()");
$idler->quit;
sq("SELECT anthropic.unserve('$envi')");
like(slurp_file($node->logfile), qr/WARNING:  anthropic_env work poller: polling for environment "\Q$envf\E" failed/,
	'the failing environment is logged at WARNING');
my @fp = grep { $_->{path} =~ m{/environments/\Q$envf\E/work/poll$} } @{ $fake->requests };
ok(@fp <= 3, scalar(@fp) . ' polls of the failing environment since: it backs off');
$fake->clear_faults;
sq("SELECT anthropic.unserve('$envf')");

# 7. Healthcheck items are never announced.
my $envc = FakeApi::new_env($node, 'hc');
my $listener = $node->background_psql('postgres');
$listener->query_until(qr/listening/, "LISTEN anthropic_work;\n\\echo listening\n");
sq("SELECT anthropic.serve('$envc', prefetch => 1)");
my $hc = $fake->enqueue($envc, { data => { type => 'healthcheck', id => 'hc_1' } });
is(poll_until("SELECT state FROM anthropic.work_get('$envc', '$hc')", 'stopped', 5), 'stopped', 'the healthcheck item was handled');
my $wn = $fake->enqueue($envc);
poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$wn'", 'ready', 5);
my $notes = $listener->query_until(qr/got/, "SELECT 1;\n\\echo got\n");
like($notes, qr/payload "\Q$wn\E"/, 'a session item of the same environment is announced');
unlike($notes, qr/payload "\Q$hc\E"/, 'the healthcheck item never is');
$listener->quit;
sq("SELECT anthropic.unserve('$envc')");

# Limits raise instead of being ignored: serve() past 256 environments.
my $served = sq('SELECT count(*) FROM anthropic.served_environments');
sq("SELECT anthropic.serve('env_pad' || i) FROM generate_series(1, 256 - $served) i");
like(sq(q{SELECT t_try($$SELECT anthropic.serve('env_one_too_many')$$)}), qr/^err\|54000\|too many served environments/,
	'the 257th served environment raises 54000');
is(sq(q{SELECT t_try($$SELECT anthropic.serve('env_pad1', prefetch => 0)$$)}), 'ok|', 'serving one again still works');
sq(q{SELECT anthropic.unserve(environment_id) FROM anthropic.served_environments WHERE environment_id LIKE 'env_pad%'});

# 4. At the lease table's limit (1,024) the poller stops polling: nothing
# is acked that it cannot hold and no row is left behind.  Long leases:
# no beat falls due while the table fills.
$fake->call('POST', '/_fake/lease', { ttl_seconds => 600 });
my $room = 1024 - sq('SELECT count(*) FROM anthropic.leases');
my @envs = map { FakeApi::new_env($node, "fill$_") } 1 .. 12;
my $per = int(($room + 40) / @envs) + 1;
for my $e (@envs)
{
	$fake->call('POST', "/_fake/environments/$e/work", {}) for 1 .. $per;
}
$fake->clear_requests;
sq("SELECT anthropic.serve(e, prefetch => 100) FROM unnest(ARRAY['" . join("','", @envs) . "']) e");
is(poll_until('SELECT count(*) FROM anthropic.leases', '1024', 90), '1024', 'the table fills to 1,024 leases');
sleep 2;
my $envre = join('|', map { quotemeta } @envs);
my @acks = grep { $_->{path} =~ m{/environments/(?:$envre)/work/[^/]+/ack$} } @{ $fake->requests };
is(scalar(@acks), $room, "exactly the $room items it could hold were acked");
$fake->clear_requests;
sleep 2;
is(scalar(grep { $_->{path} =~ m{/work/poll$} } @{ $fake->requests }), 0, 'a full table polls no more');
is(sq('SELECT count(*) FROM anthropic.held_work'), '1024', 'held_work has a row per lease, no more');
is(sq('SELECT count(*) FROM anthropic.work_secrets s WHERE NOT EXISTS (SELECT 1 FROM anthropic.leases l WHERE l.work_id = s.work_id)'),
	'0', 'no secret of an item it does not hold');
is(log_count(qr/work poller holds 1024 leases, the most it can/), 1, 'the full table is logged once');

$node->stop;
done_testing();

sub Max { my $m = shift; for (@_) { $m = $_ if $_ > $m; } return $m; }
