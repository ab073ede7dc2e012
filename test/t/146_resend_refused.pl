# A request libcurl sent again on a fresh connection that was refused may
# still have been carried out.
#
# When a reused connection dies after the request went out and before any
# answer, libcurl sends the request again on a new connection.  If that
# connection is refused, the attempt ends as "could not connect", and the
# transport took it for a request that never left: a heartbeat the server
# had applied was then sent again as new, its 412 raised as a stale
# expected_last_heartbeat (and the keeper's window was not moved).
# Fixed: once libcurl began a request, the attempt may have acted, whatever
# error ends it; the 412 is reconciled.
#
# Between the node and the fake runs a small loopback relay.  When the fake
# drops a connection (a fault: close after carrying out the request), the
# relay stops listening before it closes its side, so libcurl's re-send is
# refused, and listens again 300 ms later, before the retry's backoff ends.
use strict;
use warnings;

use FakeApi;
use IO::Select;
use IO::Socket::INET;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $fake = FakeApi->start;
my ($fport) = $fake->url =~ m{^http://127\.0\.0\.1:(\d+)$} or die "unexpected fake URL " . $fake->url;
my $dir = PostgreSQL::Test::Utils::tempdir;
my $armed = "$dir/armed";
my $dropped = "$dir/dropped";

sub relay_listener
{
	my ($port) = @_;
	return IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $port, Listen => 16,
		ReuseAddr => 1, Proto => 'tcp');
}

my $listener = relay_listener(0) or die "listen: $!";
my $rport = $listener->sockport;
my $relay = fork // die "fork: $!";
if ($relay == 0)
{
	my %peer;
	my $sel = IO::Select->new($listener);
	my $stop = time + 60;

	while (time < $stop)
	{
		foreach my $s ($sel->can_read(0.2))
		{
			if ($s == $listener)
			{
				my $c = $listener->accept or next;
				my $u = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $fport, Proto => 'tcp')
				  or die "relay: connect to the fake: $!";
				@peer{ $c, $u } = ($u, $c);
				$sel->add($c, $u);
				next;
			}
			next unless $peer{$s};
			my $other = $peer{$s};
			my $n = sysread($s, my $buf, 65536);
			if ($n)
			{
				syswrite($other, $buf) // warn "relay: write: $!";
				next;
			}
			my $from_fake = $s->peerport == $fport;
			$sel->remove($s, $other);
			delete @peer{ $s, $other };
			if ($from_fake && -e $armed)
			{
				unlink $armed;
				$sel->remove($listener);
				close $listener;
				close $other;
				close $s;
				open(my $f, '>>', $dropped) or die;
				print $f "dropped\n";
				close $f;
				usleep(300_000);
				$listener = relay_listener($rport) or die "relay: listen again: $!";
				$sel->add($listener);
				next;
			}
			close $other;
			close $s;
		}
	}
	exit 0;
}
END { kill 'KILL', $relay if $relay; }
# The relay alone holds the listener, so that closing it refuses connections.
close $listener;

my $node = $fake->new_node('resend');
$node->safe_psql('postgres', "ALTER SYSTEM SET anthropic.base_url = 'http://127.0.0.1:$rport'; SELECT pg_reload_conf()");
my $env = FakeApi::new_env($node, 'resend');
my $w = $fake->enqueue($env);

# One session: the poll and the ack open the connection the beat reuses.
my $bg = $node->background_psql('postgres', on_error_stop => 0);
is($bg->query_safe("SELECT id FROM anthropic.work_poll('$env')"), $w, 'the item is polled through the relay');
is($bg->query_safe("SELECT state FROM anthropic.work_ack('$env', '$w')"), 'starting', 'and acked');
my $opened = $fake->stats->{v1_connections_opened};

$fake->clear_requests;
$fake->fault({ method => 'POST', path_regex => "/work/$w/heartbeat\$", close => JSON::PP::true, after => JSON::PP::true,
	times => 1 });
open(my $f, '>', $armed) or die;
close $f;
my $err;
$bg->{stderr} = '';
my $hb = $bg->query("SELECT last_heartbeat FROM anthropic.work_heartbeat('$env', '$w')");
$err = $bg->{stderr};

ok(-e $dropped && !-e $armed, 'the fake dropped the beat\'s connection, the relay refused the re-send');
my @beats = $fake->requests_for(qr{/work/\Q$w\E/heartbeat$});
is(scalar(@beats), 2, 'the beat reached the fake twice: the first attempt and the retry');
ok(!defined $beats[0]{status} && ($beats[1]{status} // 0) == 412,
	'the first was carried out without an answer, the retry met its own lease (412)')
  or diag(join(' ', map { $_->{status} // '-' } @beats));
is($err, '', 'the beat did not fail') or diag($err);
like($bg->query_safe("SELECT lease_extended FROM anthropic.work_heartbeat('$env', '$w', '$hb')"), qr/^t/,
	'it returned the heartbeat the first attempt set: the next beat, expecting it, extends the lease');
cmp_ok($fake->stats->{v1_connections_opened}, '>', $opened, 'the retry opened a new connection');
$bg->quit;

$node->stop;
done_testing();
