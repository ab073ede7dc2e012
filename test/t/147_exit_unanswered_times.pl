# What the keeper records on its way out about beats that got no answer.
#
# A restart reads held_work.beat_unanswered(_at): while a TTL from that
# time has not passed, a 412 is taken as the unanswered beat's own success;
# later, as another worker's lease.  Two ways out recorded too much:
#   - SIGTERM (and any other exit) took every beat in flight for one the
#     server may apply, even one still connecting, which cannot have
#     reached it.  The lease looked unanswered after a clean stop.
#   - An exit other than through the SIGTERM path (here a cancel, which
#     ends a background worker with FATAL) wrote now() for each lease's
#     unanswered time, not the time of its beat that may have acted, so the
#     window ran a TTL from the exit.
# Fixed: a beat in flight counts only if libcurl began sending it, and the
# exit writes each lease's own time.  (That a beat which did begin is
# recorded when SIGTERM meets it is test 121's.)
#
# The API host is black-holed with a loopback listener of backlog 0, never
# accepting and filled first: the kernel drops the keeper's SYN, connect()
# hangs, and the test sees the keeper's socket in SYN_SENT.
use strict;
use warnings;

use FakeApi;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Socket;
use Test::More;
use Time::HiRes qw(time usleep);

my $ttl = 8;
my $fake = FakeApi->start;
END { local $?; $fake->stop if $fake; }
$fake->call('POST', '/_fake/lease', { ttl_seconds => $ttl });
my $node = $fake->new_node('exitunanswered',
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '1h'\n");

sub sq { return $node->safe_psql($_[1] // 'postgres', $_[0]); }
sub poll_until { return FakeApi::poll_until($node, @_); }

# Backlog 0, never accepting, filled with connections that stay open.
socket(my $full, PF_INET, SOCK_STREAM, 0) or die "socket: $!";
bind($full, pack_sockaddr_in(0, inet_aton('127.0.0.1'))) or die "bind: $!";
listen($full, 0) or die "listen: $!";
my ($hole) = unpack_sockaddr_in(getsockname($full));
my @fillers;
for (1 .. 3)
{
	socket(my $c, PF_INET, SOCK_STREAM, 0) or die "socket: $!";
	$c->blocking(0);
	connect($c, pack_sockaddr_in($hole, inet_aton('127.0.0.1')));
	push @fillers, $c;
	usleep(50_000);
}

sub keeper_pid
{
	return sq("SELECT pid FROM pg_stat_activity WHERE application_name = 'anthropic_env lease keeper'");
}

# Whether process $pid has a socket in SYN_SENT towards the black hole.
sub connecting
{
	my ($pid) = @_;
	my %mine;
	opendir(my $d, "/proc/$pid/fd") or return 0;
	for (readdir $d)
	{
		my $l = readlink("/proc/$pid/fd/$_") // '';
		$mine{$1} = 1 if $l =~ /^socket:\[(\d+)\]$/;
	}
	closedir $d;
	my $want = sprintf('0100007F:%04X', $hole);
	open(my $f, '<', '/proc/net/tcp') or return 0;
	my $n = grep { my @c = split ' '; @c > 9 && $c[2] eq $want && $c[3] eq '02' && $mine{ $c[9] } } <$f>;
	close $f;
	return $n;
}

# Sends $what to the keeper once it is connecting to the black hole and
# waits until it has gone (its way-out writes are committed by then: the
# activity entry is removed after them); the postmaster starts another 1 s
# later.
sub interrupt_connecting
{
	my ($what) = @_;
	my $pid = keeper_pid();
	ok(FakeApi::wait_for(sub { connecting($pid) }, 2 * $ttl), "the keeper's beat hangs connecting ($what)");
	sq("SELECT $what($pid)");
	ok(FakeApi::wait_for(sub { keeper_pid() ne $pid }, 5), "the keeper exits ($what)");
}

sub held { return sq("SELECT $_[0] FROM anthropic.held_work WHERE work_id = '$_[1]'"); }

is(FakeApi::workers_run($node), '2', 'the keeper and the poller run');
my $env = FakeApi::new_env($node, 'exit-unanswered');
sq("SELECT anthropic.serve('$env')");
my $w = $fake->enqueue($env);
is(sq("SELECT work_id FROM anthropic.work_claim('$env', '5s')"), $w, 'the item is taken');
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w'", 'ready', 3), 'ready', 'and ready again, held');

# --- a SIGTERM while a beat is still connecting ----------------------------
sq("ALTER SYSTEM SET anthropic.base_url = 'http://127.0.0.1:$hole'");
sq('SELECT pg_reload_conf()');
interrupt_connecting('pg_terminate_backend');
# Read before the next keeper starts: its first answered beat would clear it.
is(held('beat_unanswered', $w), 'f', 'a beat that never reached the server is not recorded as unanswered')
  or diag(sq("SELECT row_to_json(h) FROM anthropic.held_work h WHERE work_id = '$w'"));
$fake->clear_requests;
sq('ALTER SYSTEM RESET anthropic.base_url');
sq('SELECT pg_reload_conf()');
ok(FakeApi::wait_for(sub { grep { ($_->{status} // 0) == 200 } $fake->requests_for(qr{/work/\Q$w\E/heartbeat$}) }, $ttl),
	'the restarted keeper beats the lease again');
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w'", 'ready', 3), 'ready', 'which is still held');

# --- a cancel (an exit other than SIGTERM's) after a lost beat -------------
# The next beat is carried out and its answer lost, and so is libcurl's
# re-send of it on a fresh connection: unanswered as of t0.
$fake->clear_requests;
$fake->fault({ method => 'POST', path_regex => "/work/$w/heartbeat\$", close => JSON::PP::true, after => JSON::PP::true,
	times => 2 });
ok(FakeApi::wait_for(sub { scalar $fake->requests_for(qr{/work/\Q$w\E/heartbeat$}) }, $ttl), 'a beat is carried out, its answer lost');
my $t0 = ($fake->requests_for(qr{/work/\Q$w\E/heartbeat$}))[0]{time};
sq("ALTER SYSTEM SET anthropic.base_url = 'http://127.0.0.1:$hole'");
sq('SELECT pg_reload_conf()');
is(poll_until("SELECT beat_unanswered FROM anthropic.held_work WHERE work_id = '$w'", 't', 3), 't',
	'the keeper records it as unanswered')
  or diag(sq("SELECT row_to_json(l) FROM anthropic.leases l WHERE work_id = '$w'") . "\n" .
	join("\n", map { "$_->{time} " . ($_->{status} // '-') } $fake->requests_for(qr{/work/\Q$w\E/})));

$fake->clear_faults;
my @late = grep { $_->{time} > $t0 + 0.5 } $fake->requests_for(qr{/work/\Q$w\E/heartbeat$});
is(scalar @late, 0, 'no later beat reached the server (the black hole took them)');

# An attempt after it hangs connecting; a cancel there ends the keeper
# (FATAL).  Late enough that the exit's time is far from t0, and before the
# TTL rule (no answered beat for a TTL) ends the lease at t0 + 4 s.
FakeApi::sleep_until($t0 + 1.5);
interrupt_connecting('pg_cancel_backend');
my $t1 = time;
cmp_ok($t1 - $t0, '>', 1.5, sprintf('the keeper exited %.2f s after the lost beat', $t1 - $t0));
is(held('beat_unanswered', $w), 't', 'the lease is still recorded as unanswered');
my $at = held('extract(epoch FROM beat_unanswered_at)', $w);
cmp_ok(abs($at - $t0), '<', 0.5,
	sprintf('as of the beat that may have acted (%+.2f s), not of the exit', $at - $t0));

$node->stop;
done_testing();
