# An answered beat whose heartbeat never reached held_work, then an exit.
#
# While a table lock holds the keeper's flushes back, its beats go on and
# are answered: the server's heartbeat moves on, the table keeps the old
# one.  A restart would beat with that old heartbeat and meet a 412; unless
# the row says a beat may have acted, the 412 is taken as another worker's
# and our own lease is lost.  An exit other than through SIGTERM's path
# (here a cancel, which ends a background worker with FATAL) wrote only the
# leases with an unanswered beat.
# Fixed: the way out also records every lease with unflushed changes as
# having a beat that may have acted, as of its last answered beat.
#
# The cancel must meet the keeper inside a request (elsewhere its own error
# handling takes it): the API host is black-holed as in test 147, and the
# table lock is released just before the cancel, while the keeper waits on
# connect() and so cannot flush.
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Socket;
use Test::More;
use Time::HiRes qw(time usleep);

my $ttl = 8;
my $fake = FakeApi->start;
END { local $?; $fake->stop if $fake; }
$fake->call('POST', '/_fake/lease', { ttl_seconds => $ttl });
my $node = $fake->new_node('exitunflushed',
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '1h'\n");

sub sq { return $node->safe_psql('postgres', $_[0]); }
sub poll_until { return FakeApi::poll_until($node, @_); }
sub held { return sq("SELECT $_[0] FROM anthropic.held_work WHERE work_id = '$_[1]'"); }

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

is(FakeApi::workers_run($node), '2', 'the keeper and the poller run');
my $env = FakeApi::new_env($node, 'exit-unflushed');
sq("SELECT anthropic.serve('$env')");
my $w = $fake->enqueue($env);
is(sq("SELECT work_id FROM anthropic.work_claim('$env', '5s')"), $w, 'the item is taken');
is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w'", 'ready', 3), 'ready', 'and ready again, held');
is(held('beat_unanswered', $w), 'f', 'with no unanswered beat');

my $locker = $node->background_psql('postgres', on_error_stop => 0);
$locker->query_safe('BEGIN; LOCK TABLE anthropic.held_work IN ACCESS EXCLUSIVE MODE');
$fake->clear_requests;
ok(FakeApi::wait_for(sub { grep { ($_->{status} // 0) == 200 } $fake->requests_for(qr{/work/\Q$w\E/heartbeat$}) }, $ttl),
	'a beat is answered while the table is locked');
my ($beat) = grep { ($_->{status} // 0) == 200 } $fake->requests_for(qr{/work/\Q$w\E/heartbeat$});
my $tb = $beat->{time};

# The keeper's next beat hangs connecting to the black hole.
sq("ALTER SYSTEM SET anthropic.base_url = 'http://127.0.0.1:$hole'");
sq('SELECT pg_reload_conf()');
my $pid = sq("SELECT pid FROM pg_stat_activity WHERE application_name = 'anthropic_env lease keeper'");
ok(FakeApi::wait_for(sub { connecting($pid) }, $ttl), "the keeper's next beat hangs connecting");
$locker->query_safe('COMMIT');
sq("SELECT pg_cancel_backend($pid)");
ok(FakeApi::wait_for(sub { sq("SELECT count(*) FROM pg_stat_activity WHERE pid = $pid") eq '0' }, 5),
	'the cancel ends the keeper');
$locker->quit;

my $stored = held('extract(epoch FROM last_beat_at)', $w);
cmp_ok($tb - $stored, '>', 1, sprintf('the answered beat never reached the table (its time %.2f s before)', $tb - $stored));
is(held('beat_unanswered', $w), 't', 'the exit records a beat that may have acted')
  or diag(sq("SELECT row_to_json(h) FROM anthropic.held_work h WHERE work_id = '$w'"));
my $at = held('extract(epoch FROM beat_unanswered_at)', $w) || 0;
cmp_ok(abs($at - $tb), '<', 0.5, sprintf('as of that answered beat (%+.2f s)', $at - $tb));

sq('ALTER SYSTEM RESET anthropic.base_url');
sq('SELECT pg_reload_conf()');
$node->stop;
done_testing();
