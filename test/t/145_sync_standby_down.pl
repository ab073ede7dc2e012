# The keeper's writes do not wait for a synchronous standby.
#
# With synchronous_standby_names naming a standby that is not there, every
# commit waits for it.  The keeper's rounds end in a commit (held_work), so
# they stopped, no lease was beaten again and all were lost; and since
# SIGTERM cancels the keeper only once, its exit waited for good.  Fixed:
# the keeper and the poller commit with synchronous_commit = local.
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $ttl = 4;
my $fake = FakeApi->start;
END { local $?; $fake->stop if $fake; }
$fake->call('POST', '/_fake/lease', { ttl_seconds => $ttl });
# Synchronous replication needs WAL senders (a node made for streaming).
my $node = $fake->new_node('syncdown', init => { allows_streaming => 1 },
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '1h'\n");

sub sq { return $node->safe_psql($_[1] // 'postgres', $_[0]); }
sub poll_until { return FakeApi::poll_until($node, @_); }

is(FakeApi::workers_run($node), '2', 'the keeper and the poller run');
my $env = FakeApi::new_env($node, 'sync-down');
sq("SELECT anthropic.serve('$env')");
my $w = $fake->enqueue($env);
is(sq("SELECT work_id FROM anthropic.work_claim('$env', '5s')"), $w, 'the item is taken');
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w'", 'ready', 3), 'ready', 'and ready again, held');

# From here on a commit that waits for the standby never ends; these two
# statements write no WAL of their own.
sq("ALTER SYSTEM SET synchronous_standby_names = 'ghost'");
sq('SELECT pg_reload_conf()');
usleep(300_000);
is(sq('SHOW synchronous_standby_names'), 'ghost', 'a synchronous standby is required and is not there');
# A session's commit now waits: the same wait the keeper's commits faced.
my $probe = $node->background_psql('postgres', on_error_stop => 0);
$probe->query_until(qr/probing/, "SET application_name = 'sync_probe';\n\\echo probing\nCREATE TABLE sync_probe ();\n");
is(poll_until("SELECT wait_event FROM pg_stat_activity WHERE application_name = 'sync_probe'", 'SyncRep', 5), 'SyncRep',
	'a session\'s commit waits for the standby');
sq("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'sync_probe'");
$probe->quit;
my $before = sq("SELECT extract(epoch FROM last_beat_at) FROM anthropic.held_work WHERE work_id = '$w'");
$fake->clear_requests;
FakeApi::sleep_until(time + 2 * $ttl);
my @ok = grep { ($_->{status} // 0) == 200 } $fake->requests_for(qr{/work/\Q$w\E/heartbeat$});
cmp_ok(scalar(@ok), '>=', 3, 'the keeper went on beating the lease (' . scalar(@ok) . ' beats in two TTLs)');
my $after = sq("SELECT extract(epoch FROM last_beat_at) FROM anthropic.held_work WHERE work_id = '$w'");
cmp_ok($after - $before, '>', $ttl, 'and committed its beats to held_work');
is(sq("SELECT state FROM anthropic.leases WHERE work_id = '$w'"), 'ready', 'the lease is held');

my $kpid = sq(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'anthropic_env keeper'});
my $logpos = -s $node->logfile;
my $t_term = time;
sq("SELECT pg_terminate_backend($kpid)");
ok(FakeApi::wait_for(sub { sq("SELECT count(*) FROM pg_stat_activity WHERE pid = $kpid") eq '0' }, 5), 'SIGTERM ends the keeper');
my $took = time - $t_term;
cmp_ok($took, '<', 1.0, sprintf('within 1 s (%.0f ms)', $took * 1000));
my $tail = substr(slurp_file($node->logfile), $logpos);
like($tail, qr/lease keeper beat 1 of 1 held leases on its way out, 1 answered/, 'after its last round');
unlike($tail, qr/could not|cut short/, 'with every write made');

sq('ALTER SYSTEM RESET synchronous_standby_names');
sq('SELECT pg_reload_conf()');
$node->stop;
done_testing();
