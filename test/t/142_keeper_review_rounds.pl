# Review of issue 14 (rules 2, 7, 9 and the NOTIFY): what a break-it
# review of the keeper found, against the fake with an 8 s TTL.
# 1. The keeper's re-ack of an item whose first ack went unanswered is
#    checked by a re-fetch when it meets a 409.  That re-fetch ran with
#    the retries of a session's call (two, each waiting the server's
#    Retry-After), inside the round that beats every other lease: a 429
#    asking for 20 s held every beat for 40 s.  And a re-fetch that failed
#    released the item as "no longer offered".  Fixed: the re-fetch is one
#    attempt within the round's bound, and only a 409 the re-fetch checked
#    (or a 404) releases the item.
# 2. The keeper's SIGTERM is a cancel; one raised inside a call's answer
#    (its re-fetch, its conversion) was taken as that call's error, so the
#    round went on uncancellable and the call was misread.  Fixed: a cancel
#    ends the round.
# 3. Items read back after a restart were announced (NOTIFY) at once,
#    though sessions may take them only once a beat has succeeded; when
#    the first beats failed, a LISTEN-driven consumer found nothing, and
#    nothing was announced when they became claimable.  Fixed: announced
#    when the first beat succeeds.
# 4. Ids and heartbeats longer than the 127 bytes the keeper keeps were cut
#    short, so a beat would name another item or never match.
# 5. A beat that went unanswered was reconciled however long ago it went
#    out: after a restart longer than the TTL, a 412 showing another
#    worker's lease was taken as that beat's success, and the item was
#    offered again.  Fixed: held_work.beat_unanswered_at bounds it.
use strict;
use warnings;

use FakeApi;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $ttl = 8;
my $fake = FakeApi->start;
END { local $?; $fake->stop if $fake; }
$fake->call('POST', '/_fake/lease', { ttl_seconds => $ttl });
my $node = $fake->new_node('reviewrounds',
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '1h'\n");

sub sq { return $node->safe_psql($_[1] // 'postgres', $_[0]); }
sub poll_until { return FakeApi::poll_until($node, @_); }
sub lease { return sq("SELECT coalesce((SELECT state FROM anthropic.leases WHERE work_id = '$_[0]'), 'not held')"); }
sub pid_of { return sq("SELECT pid FROM pg_stat_activity WHERE backend_type = 'anthropic_env $_[0]'"); }

sub held_item
{
	my $env = shift;
	sq("SELECT anthropic.serve('$env')");
	my $w = $fake->enqueue($env);
	is(sq("SELECT work_id FROM anthropic.work_claim('$env', '5s')"), $w, "an item of $env is taken");
	is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w'", 'ready', 3), 'ready', 'and ready again, held');
	return $w;
}

# Leaves an item of $env acked on the server, its answer lost: the fake
# carries the first ack out and drops the connection.  The poller sends it
# once; the keeper acks it again, meets the 409 and checks it by a re-fetch.
sub ack_lost
{
	my $env = shift;
	$fake->fault({ method => 'POST', path_regex => "/environments/$env/work/[^/]+/ack\$", close => JSON::PP::true,
		after => JSON::PP::true, times => 1 });
	sq("SELECT anthropic.serve('$env', prefetch => 1)");
	my $w = $fake->enqueue($env);
	ok(FakeApi::wait_for(sub { grep { ($_->{status} // 0) == 409 } $fake->requests_for(qr{/work/\Q$w\E/ack$}) }, 6),
		"the keeper acked $w again and met the first ack's 409");
	return $w;
}

is(FakeApi::workers_run($node), '2', 'the keeper and the poller run');

# 1. A throttled re-fetch neither holds the round nor releases the item
# (nor holds the poller: the poller's ack is one attempt).
my $env_a = FakeApi::new_env($node, 'review-a');
my $wa = held_item($env_a);
my $env_b = FakeApi::new_env($node, 'review-b');
$fake->fault({ method => 'GET', path_regex => "^/v1/environments/$env_b/work/work_[^/]+\$", status => 429,
	headers => { 'retry-after' => '20' }, times => 2 });
$fake->clear_requests;
my $wb = ack_lost($env_b);
my $t1 = time;
ok(FakeApi::wait_for(sub { (grep { ($_->{status} // 0) == 429 } $fake->requests_for(qr{/work/\Q$wb\E$})) >= 2 }, 8),
	'the re-ack\'s re-fetch met the 429 twice');
my @gets = $fake->requests_for(qr{/work/\Q$wb\E$});
cmp_ok($gets[1]{time} - $gets[0]{time}, '<', 5,
	sprintf('a later round sent the second re-fetch (%.1f s after the first), not a retry waiting out the 20 s', $gets[1]{time} - $gets[0]{time}));
FakeApi::sleep_until($t1 + $ttl + 2);
is(lease($wa), 'ready', 'a lease of another environment stayed held through the throttled re-fetches (a whole TTL)');
my @beats_a = grep { ($_->{status} // 0) == 200 && $_->{time} > $t1 } $fake->requests_for(qr{/work/\Q$wa\E/heartbeat$});
cmp_ok(scalar(@beats_a), '>=', 2, 'and its beats went on (' . scalar(@beats_a) . ' answered)');
is(poll_until("SELECT coalesce((SELECT state FROM anthropic.leases WHERE work_id = '$wb'), 'not held')", 'ready', 6),
	'ready', 'the re-acked item is held once a re-fetch gets through, not released by the failed ones');
is(sq("SELECT state FROM anthropic.work_get('$env_b', '$wb')"), 'active', 'its lease is claimed on the server');
sq("SELECT anthropic.unserve('$env_b')");

# 2. SIGTERM while the keeper's re-fetch is answered slowly: the keeper
# ends within 1 s and the item is held after it comes back.  (libcurl
# sends the dropped ack again at once, so the poller meets the 409 first:
# its re-fetch fails fast, the keeper's re-ack is held 900 ms.)
my $env_c = FakeApi::new_env($node, 'review-c');
$fake->fault({ method => 'GET', path_regex => "^/v1/environments/$env_c/work/work_[^/]+\$", status => 503, times => 1 });
$fake->fault({ method => 'GET', path_regex => "^/v1/environments/$env_c/work/work_[^/]+\$", delay_ms => 900, times => 1 });
my $kpid = pid_of('keeper');
$fake->clear_requests;
my $wc = ack_lost($env_c);
ok(FakeApi::wait_for(sub { $fake->requests_for(qr{/work/\Q$wc\E$}) >= 2 }, 6), 'the keeper\'s re-fetch is in flight');
my $t_term = time;
sq("SELECT pg_terminate_backend($kpid)");
ok(FakeApi::wait_for(sub { sq("SELECT count(*) FROM pg_stat_activity WHERE pid = $kpid") eq '0' }, 3), 'the keeper ends');
my $took = time - $t_term;
cmp_ok($took, '<', 1.0, sprintf('within 1 s of SIGTERM (%.0f ms)', $took * 1000));
diag(join("\n", map { sprintf('%+.3f %s %s %s', $_->{time} - $t_term, $_->{method}, $_->{path}, $_->{status} // '-') } $fake->requests_for(qr{\Q$wc\E})));
$fake->clear_requests;
is(FakeApi::workers_run($node), '2', 'the keeper is back');
is(poll_until("SELECT coalesce((SELECT state FROM anthropic.leases WHERE work_id = '$wc'), 'not held')", 'ready', 8),
	'ready', 'the item whose re-fetch the SIGTERM cut short is held, not released');
ok(scalar(grep { ($_->{status} // 0) == 200 } $fake->requests_for(qr{/work/\Q$wc\E$})) >= 1, 'a re-fetch after the keeper came back checked it')
  or diag(join("\n", map { "$_->{method} $_->{path} " . ($_->{status} // '-') } $fake->requests_for(qr{\Q$wc\E})));
is(sq("SELECT state FROM anthropic.work_get('$env_c', '$wc')"), 'active', 'its lease is claimed on the server');
sq("SELECT anthropic.unserve('$env_c')");
sq("SELECT anthropic.unserve('$env_a')");

# 3. After a restart an item is announced when a session can take it.
my $env_d = FakeApi::new_env($node, 'review-d');
my $wd = held_item($env_d);
$node->stop('fast');
$fake->clear_requests;
# The beats fail until the listener listens, however long the start takes.
$fake->fault({ method => 'POST', path_regex => "/work/$wd/heartbeat\$", status => 503, times => -1 });
$node->start;
my $listener = $node->background_psql('postgres');
$listener->query_until(qr/listening/, "LISTEN anthropic_work;\n\\echo listening\n");
ok(FakeApi::wait_for(sub { scalar $fake->requests_for(qr{/work/\Q$wd\E/heartbeat$}) }, 8), 'the first beat after the restart failed');
$fake->clear_faults;
my ($t_note, $claimable);
for my $i (1 .. 100)
{
	my $out = $listener->query_until(qr/tick$i/, "SELECT 1;\n\\echo tick$i\n");
	if ($out =~ /Asynchronous notification "anthropic_work" with payload "\Q$wd\E" received/)
	{
		$t_note = time;
		$claimable = sq("SELECT count(*) FROM anthropic.work_claim('$env_d', '0')");
		last;
	}
	usleep(100_000);
}
$listener->quit;
my @bd = grep { defined $_->{status} } $fake->requests_for(qr{/work/\Q$wd\E/heartbeat$});
my ($first_ok) = grep { $_->{status} == 200 } @bd;
diag('beats after the restart: ' . join(' ', map { $_->{status} } @bd));
ok(defined $t_note, 'the item read back after the restart was announced');
ok(defined $first_ok && defined $t_note && $t_note >= $first_ok->{time},
	'only after the server confirmed its lease (the beats before failed with 503)');
is($claimable, '1', 'and when announced, a session could take it');
sq("SELECT anthropic.unserve('$env_d')");

# 4. Ids and heartbeats longer than 127 bytes.
my $env_e = FakeApi::new_env($node, 'review-e');
my $we = held_item($env_e);
my $long_hb = '2026-01-01T00:00:00.000000Z' . ('x' x 150);
$fake->fault({ method => 'POST', path_regex => "/work/$we/heartbeat\$", status => 200, times => 1,
	body => encode_json({ type => 'work_heartbeat', last_heartbeat => $long_hb, lease_extended => JSON::PP::true,
		state => 'active', ttl_seconds => $ttl }) });
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$we'", 'lost', $ttl), 'lost',
	'a lease whose heartbeat the keeper cannot echo verbatim is lost, not beaten with a cut one');
like(sq("SELECT error FROM anthropic.leases WHERE work_id = '$we'"), qr/longer than the 127 bytes/, 'and says why');
my $long_id = 'work_' . ('L' x 140);
my $logpos = -s $node->logfile;
$fake->clear_requests;
$fake->fault({ method => 'GET', path_regex => "^/v1/environments/$env_e/work/poll\$", status => 200, times => 1,
	body => encode_json({ type => 'work', id => $long_id, environment_id => $env_e, state => 'queued',
		data => { type => 'session', id => 'sesn_1' }, created_at => '2026-01-01T00:00:00Z' }) });
sq("SELECT anthropic.serve('$env_e', prefetch => 1)");
ok(FakeApi::wait_for(sub { slurp_file($node->logfile, $logpos) =~ /left a work item of environment "\Q$env_e\E" unacknowledged/ }, 6),
	'a polled item whose id is longer than 127 bytes is left with a WARNING');
is(scalar(grep { $_->{path} =~ /\/ack$/ && index($_->{path}, 'LLLL') >= 0 } @{ $fake->requests }), 0,
	'and is not acked under a cut id');
is(sq("SELECT count(*) FROM anthropic.leases WHERE length(work_id) > 127 OR work_id LIKE 'work_LLL%'"), '0', 'nor held');
sq("SELECT anthropic.unserve('$env_e')");

# 5. A restart longer than the TTL after an unanswered beat: whatever
# lease that beat set is over, so the running lease the first beat's 412
# shows is another worker's, not that beat's success.
my $env_f = FakeApi::new_env($node, 'review-f');
my $wf = held_item($env_f);
$fake->clear_requests;
$fake->fault({ method => 'POST', path_regex => "/work/$wf/heartbeat\$", delay_ms => 1500, times => -1 });
ok(FakeApi::wait_for(sub { scalar $fake->requests_for(qr{/work/\Q$wf\E/heartbeat$}) }, $ttl), 'a beat is in flight, held by the server');
usleep(1_200_000);
my $t_stop = time;
$node->stop('fast');
$fake->clear_faults;
# The last beat the server applied went out before the stop and was
# applied 1.5 s later: its lease is over a TTL after that.
FakeApi::sleep_until($t_stop + 1.5 + $ttl + 1);
$fake->call('POST', "/_fake/environments/$env_f/work/$wf/expire", {});
$fake->clear_requests;
$node->start;
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$wf'", 'lost', 8), 'lost',
	'after a restart longer than the TTL the 412 is another worker\'s lease: the item is lost');
my @bf = grep { defined $_->{status} } $fake->requests_for(qr{/work/\Q$wf\E/heartbeat$});
is($bf[0]{status} // 0, 412, 'the first beat after the restart met the other lease (412)');
is(scalar(grep { ($_->{status} // 0) == 200 } @bf), 0, 'and no beat took the other worker\'s lease over');

$node->stop;
done_testing();
