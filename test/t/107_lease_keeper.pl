# The lease keeper (issue 14): the database as a self-hosted environment
# worker, against the fake with a 2 s lease TTL (beats every second).
# Each block names the rule of the README's "Guarantees" it checks.
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $fake = FakeApi->start;
$fake->call('POST', '/_fake/lease', { ttl_seconds => 2 });
my $node = $fake->new_node('keeper',
	init => { allows_streaming => 1 },
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '1h'\nrestart_after_crash = on\n");
$node->safe_psql('postgres', $FakeApi::T_TRY);

sub sq { return $node->safe_psql('postgres', $_[0]); }

sub poll_until { return FakeApi::poll_until($node, @_); }

sub lease { return sq("SELECT state FROM anthropic.leases WHERE work_id = '$_[0]'"); }

my $env = sq(q{SELECT id FROM anthropic.env_create('{"name": "keeper", "config": {"type": "self_hosted"}}')});
like(poll_until(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('anthropic_env keeper', 'anthropic_env poller')}, '2', 10),
	qr/^2$/, 'the keeper and the poller run');

# Not served: refused before waiting.
like(sq("SELECT t_try(\$\$SELECT count(*) FROM anthropic.work_claim('$env')\$\$)"), qr/^err\|55000\|environment "\Q$env\E" is not served/,
	'work_claim refuses an environment that is not served');
sq("SELECT anthropic.serve('$env', worker_id => 'db-keeper-1')");

# Rule 1: polls on demand only.
$fake->clear_requests;
sleep 2;
is(scalar($fake->requests_for(qr{/work/poll$})), 0, 'no session waits and prefetch is 0: no poll');

my $w1 = $fake->enqueue($env, { metadata => { job => 'one' } });
my $t0 = time;
my $row = sq("SELECT work_id, data_type, metadata->>'job', secret IS NOT NULL FROM anthropic.work_claim('$env', '5s', 'c1')");
is($row, "$w1|session|one|t", 'work_claim waits for a poll and returns the item with its secret');
ok(time - $t0 < 3, 'within a poll round');
my @polls = $fake->requests_for(qr{/work/poll$});
ok(@polls >= 1, 'a session waiting made the keeper poll');
ok(!(grep { ($_->{params}{block_ms} // '') ne '999' || ($_->{headers}{'anthropic-worker-id'} // '') ne 'db-keeper-1' } @polls),
	'polls use block_ms=999 and the worker id');
my @ack = $fake->requests_for(qr{/work/\Q$w1\E/ack$});
my @beats = $fake->requests_for(qr{/work/\Q$w1\E/heartbeat$});
is(scalar @ack, 1, 'acked once');
is($beats[0]{params}{expected_last_heartbeat}, 'NO_HEARTBEAT', 'the lease is claimed with NO_HEARTBEAT');
# The claiming psql session has ended: rule 6 makes it ready again.
is(poll_until("SELECT state || coalesce(claimed_pid::text, '-') FROM anthropic.leases WHERE work_id = '$w1'", 'ready-', 2),
	'ready-', 'a session that ended without finishing hands the item back within 2 s');

# Rule 2: beats every interval, echoing last_heartbeat, past several TTLs.
sleep 5;
is(lease($w1), 'ready', 'held for 2.5 TTLs: still ready');
@beats = $fake->requests_for(qr{/work/\Q$w1\E/heartbeat$});
ok(@beats >= 5, 'beaten about every second (' . scalar(@beats) . ' beats)');
ok(!(grep { $_->{status} != 200 } @beats), 'every beat succeeded (each echoed the last_heartbeat)');
is(sq("SELECT state FROM anthropic.work_get('$env', '$w1')"), 'active', 'the item is active remotely');

# Rule 5: finish takes effect at commit; then stop with force.
my $bg = $node->background_psql('postgres', on_error_stop => 0);
$bg->query_until(qr/claimed1/, "SELECT work_id AS w FROM anthropic.work_claim('$env', '1s') \\gset\n\\echo claimed1\n");
is(lease($w1), 'claimed', 'claimed by a background session');
is(sq("SELECT consumer IS NULL AND claimed_pid IS NOT NULL FROM anthropic.leases WHERE work_id = '$w1'"), 't', 'leases shows the claiming pid');
$bg->query_until(qr/pending1/, "BEGIN;\nCREATE TABLE result_one (v int);\nSELECT anthropic.work_finish(:'w');\n\\echo pending1\n");
is(sq("SELECT anthropic.work_should_stop('$w1')::text || state FROM anthropic.leases WHERE work_id = '$w1'"), 'falseclaimed',
	'before commit the item is still claimed');
$bg->query_until(qr/committed1/, "COMMIT;\n\\echo committed1\n");
is(poll_until("SELECT state || (stop_sent_at IS NOT NULL) FROM anthropic.leases WHERE work_id = '$w1'", 'finishedtrue', 3),
	'finishedtrue', 'after commit: finished, and the stop was sent');
my @stops = $fake->requests_for(qr{/work/\Q$w1\E/stop$});
is($stops[0]{body}, '{"force":true}', 'stopped with force');
is(sq("SELECT state FROM anthropic.work_get('$env', '$w1')"), 'stopped', 'the item is stopped remotely');

# Rule 3: a lease lost before commit rolls the results back (40001).
my $w2 = $fake->enqueue($env);
$bg->query_until(qr/claimed2/, "SELECT work_id AS w FROM anthropic.work_claim('$env', '5s') \\gset\n\\echo claimed2\n");
is(lease($w2), 'claimed', 'second item claimed');

my $listener = $node->background_psql('postgres');
$listener->query_until(qr/listening/, "LISTEN anthropic_work;\n\\echo listening\n");
$bg->query_until(qr/pending2/, "BEGIN;\nCREATE TABLE result_two (v int);\nSELECT anthropic.work_finish(:'w');\n\\echo pending2\n");
$fake->call('POST', "/_fake/environments/$env/work/$w2/expire", {});
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w2'", 'lost', 3), 'lost',
	'a 412 from another worker\'s lease makes the item lost');
is(sq("SELECT anthropic.work_should_stop('$w2')"), 't', 'work_should_stop is true');
$bg->query_until(qr/committed2/, "COMMIT;\n\\echo committed2\n");
is(sq("SELECT to_regclass('result_two') IS NULL"), 't', 'the COMMIT failed with 40001: the results rolled back');
is(sq("SELECT to_regclass('result_one') IS NOT NULL"), 't', 'the earlier finished work was kept');
sleep 1;
is(scalar($fake->requests_for(qr{/work/\Q$w2\E/stop$})), 0, 'a lost item is released, not stopped');
my $notes = $listener->query_until(qr/got/, "SELECT 1;\n\\echo got\n");
like($notes, qr/Asynchronous notification "anthropic_work" with payload "\Q$w2\E" received/, 'NOTIFY anthropic_work names the lost item');
$bg->query_until(qr/released2/, "SELECT anthropic.work_release(:'w');\n\\echo released2\n");

# Rule 4: a stop asked by the server.
my $w3 = $fake->enqueue($env);
$bg->query_until(qr/claimed3/, "SELECT work_id AS w FROM anthropic.work_claim('$env', '5s') \\gset\n\\echo claimed3\n");
is(lease($w3), 'claimed', 'third item claimed');
sq("SELECT anthropic.work_stop('$env', '$w3')");
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w3'", 'stop_requested', 3), 'stop_requested',
	'stopping remotely: stop_requested');
is(sq("SELECT anthropic.work_should_stop('$w3')"), 't', 'work_should_stop is true');
is(scalar(grep { ($_->{body} // '') eq '{"force":true}' } $fake->requests_for(qr{/work/\Q$w3\E/stop$})), 0, 'no force stop while the session holds it');
$bg->query_until(qr/released3/, "SELECT anthropic.work_release(:'w');\n\\echo released3\n");
is(poll_until("SELECT state FROM anthropic.work_get('$env', '$w3')", 'stopped', 3), 'stopped',
	'released: the keeper force-stopped it');

# Rule 8: healthcheck items are handled by the keeper alone.
my $env2 = sq(q{SELECT id FROM anthropic.env_create('{"name": "hc", "config": {"type": "self_hosted"}}')});
sq("SELECT anthropic.serve('$env2', prefetch => 1)");
my $hc = $fake->enqueue($env2, { data => { type => 'healthcheck', id => 'hc_1' } });
is(poll_until("SELECT state FROM anthropic.work_get('$env2', '$hc')", 'stopped', 5), 'stopped',
	'a healthcheck item is acked, beaten and stopped by the keeper');
is(sq("SELECT count(*) FROM anthropic.work_claim('$env2')"), '0', 'and never offered to sessions');
ok(scalar($fake->requests_for(qr{/work/\Q$hc\E/heartbeat$})) >= 1, 'it was beaten');

# Rule 9: a failing environment backs off with a WARNING, the others go on.
my $env3 = sq(q{SELECT id FROM anthropic.env_create('{"name": "badkey", "config": {"type": "self_hosted"}}')});
$fake->call('POST', "/_fake/environments/$env3/key", { key => 'a-key-this-database-lacks' });
sq("SELECT anthropic.serve('$env3', prefetch => 1)");
my $w4 = $fake->enqueue($env);
is(sq("SELECT count(*) FROM anthropic.work_claim('$env', '5s')"), '1', 'the good environment still gets its item');
ok(poll_until(q{SELECT 1}, '1', 1), 'tick');
my $log = slurp_file($node->logfile);
like($log, qr/WARNING:  anthropic_env work poller: polling for environment "\Q$env3\E" failed/, 'the bad environment is logged at WARNING');
my @bad = $fake->requests_for(qr{/environments/\Q$env3\E/work/poll$});
ok(@bad >= 1 && @bad <= 4, 'and backs off (' . scalar(@bad) . ' polls)');
sq("SELECT anthropic.unserve('$env3')");

# Rule 9 and 7: SIGTERM ends the keeper within 1 s; its restart loses nothing.
my $w5 = $w4;
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w5'", 'ready', 2), 'ready', 'an item held, ready');
my $kpid = sq(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'anthropic_env keeper'});
$t0 = time;
sq("SELECT pg_terminate_backend($kpid)");
poll_until("SELECT count(*) FROM pg_stat_activity WHERE pid = $kpid", '0', 3);
ok(time - $t0 < 1.5, sprintf('the keeper ended %.0f ms after SIGTERM', (time - $t0) * 1000));
is(scalar($fake->requests_for(qr{/work/\Q$w5\E/stop$})), 0, 'it stopped nothing on its way out');
sleep 4;
is(lease($w5), 'ready', 'after the keeper restarted the item is still held');
ok(!(grep { $_->{status} != 200 } $fake->requests_for(qr{/work/\Q$w5\E/heartbeat$})), 'and every beat of it succeeded');

# Rule 7: a clean restart shorter than the TTL loses nothing.
$bg->quit;
$listener->quit;
$node->restart;
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w5'", 'ready', 5), 'ready', 'after a clean restart: ready');
$fake->clear_requests;
sleep 3;
is(lease($w5), 'ready', 'still held 1.5 TTLs later');
@beats = $fake->requests_for(qr{/work/\Q$w5\E/heartbeat$});
ok(@beats >= 2 && !(grep { $_->{status} != 200 } @beats), 'beats resumed with the stored last_heartbeat');
is(sq("SELECT secret IS NOT NULL FROM anthropic.work_claim('$env', '1s')"), 't', 'and the secret is still there');

# Rule 7: after a crash the secrets are gone: released, shown lost.
$node->stop('immediate');
$node->start;
like(poll_until("SELECT state || ' ' || error FROM anthropic.leases WHERE work_id = '$w5'", 'x', 5),
	qr/^lost the secret was lost in a crash/, 'after a crash the item is lost');

# Rule 9: nothing runs on a standby.
$node->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($node, 'b', has_streaming => 1);
$standby->start;
sleep 2;
is($standby->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('anthropic_env keeper', 'anthropic_env poller')}),
	'0', 'neither keeper process runs on a standby');
is($standby->safe_psql('postgres', 'SELECT count(*) FROM anthropic.leases'), '0', 'and it holds no lease');
$standby->stop;

# The claimed metadata is the server's text, taken from the poll's answer:
# 16 keys (the API's most), with escapes and non-ASCII text.
my %md = map { (sprintf('k%03d', $_) => "v$_ \"q\" \x{e9}\x{1F600}") } 1 .. 16;
my $w6 = $fake->enqueue($env, { metadata => \%md });
is(sq("SELECT count(*) FILTER (WHERE value = 'v' || substr(key, 2)::int || E' \"q\" \\u00e9\\U0001F600') FROM anthropic.work_claim('$env', '5s') c, jsonb_each_text(c.metadata)"),
	'16', 'work_claim returns all 16 metadata keys with their values');

# Privileges: nothing for PUBLIC; the view has no secret.
sq('CREATE ROLE plain LOGIN');
my ($rc, $out, $err) = $node->psql('postgres', "SELECT * FROM anthropic.work_claim('$env')", extra_params => [ '-U', 'plain' ]);
like($err, qr/permission denied/, 'a plain role cannot claim');
is(sq(q{SELECT count(*) FROM information_schema.columns WHERE table_schema = 'anthropic' AND table_name = 'leases' AND column_name = 'secret'}),
	'0', 'the leases view has no secret');
is(sq(q{SELECT relpersistence FROM pg_class WHERE oid = 'anthropic.work_secrets'::regclass}), 'u', 'secrets are UNLOGGED');

$node->stop;
done_testing();
