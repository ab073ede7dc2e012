# Reliability (issue 13, rule 1): a cancel, statement_timeout and
# pg_terminate_backend end a call within 0.5 s wherever it waits:
#   - DNS: the base URL names a host (https://hung-N.example) and the
#     resolver never answers.  scripts/test runs the suites in a private
#     network and mount namespace whose /etc/resolv.conf says
#     "nameserver 127.0.0.1" and where an unprivileged process may bind
#     port 53; this test listens there on UDP, records each query's name
#     and never answers.  Skipped when those conditions do not hold.
#   - TCP connect: a loopback listener with a backlog of 0, never accepting,
#     filled first; the kernel drops the next SYN, so connect() hangs.
#   - TLS handshake: https:// to a loopback port that accepts TCP (the
#     kernel completes the handshake) and never speaks.
#   - retry backoff: a 429 with retry-after: 30.
# Each scenario asserts that the call really waited where it should (the
# resolver saw the query; /proc/net/tcp shows the backend's socket in
# SYN_SENT or ESTABLISHED to that port; the fake answered the 429), that
# the call ended with 57014 (cancel, statement_timeout) or the backend was
# gone (terminate) within the limit, and that the next call works (in the
# same session after a cancel or timeout, in a new one after a terminate).
# The times are measured in SQL: for a cancel, from just before
# pg_cancel_backend to the clock_timestamp() of the DO block's exception
# handler; for a statement_timeout, the DO block's own elapsed time minus
# the timeout; for a terminate, until the pid is gone from pg_stat_activity.
use strict;
use warnings;

use FakeApi;
use IO::Handle;
use IO::Socket::INET;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Socket qw(:all);
use Test::More;
use Time::HiRes qw(time usleep);

my $LIMIT_MS = 500;
my $TIMEOUT_MS = 300;

my $dir = "$PostgreSQL::Test::Utils::tmp_check/waits";
mkdir $dir;

my $fake = FakeApi->start;
my @children;
END
{
	local $?;
	kill 'KILL', @children if @children;
	waitpid($_, 0) for @children;
	$fake->stop if $fake;
}
my $node = $fake->new_node('waits');
my $started = $node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()');
$node->safe_psql('postgres', q{
CREATE FUNCTION t_terminate(p int) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
	t0 timestamptz := clock_timestamp();
BEGIN
	PERFORM pg_terminate_backend(p);
	LOOP
		PERFORM pg_stat_clear_snapshot();
		EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = p);
		EXIT WHEN clock_timestamp() - t0 > interval '10 s';
		PERFORM pg_sleep(0.002);
	END LOOP;
	RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
END $$;
});
my $env = $node->safe_psql('postgres', q{SELECT id FROM anthropic.env_create('{"name": "waits"}')});
like($env, qr/^env_/, 'created an environment');

# --- the hung resolver ----------------------------------------------------

my $dns_log = "$dir/dns.log";
my $resolver_ok = 0;
{
	my $conf = -r '/etc/resolv.conf' ? slurp_file('/etc/resolv.conf') : '';
	my @ns = $conf =~ /^\s*nameserver\s+(\S+)/mg;
	my $sock = (@ns == 1 && $ns[0] eq '127.0.0.1')
	  ? IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 53, Proto => 'udp', ReuseAddr => 1)
	  : undef;
	if ($sock)
	{
		open my $fh, '>', $dns_log or die;
		close $fh;
		my $pid = fork // die "fork: $!";
		if ($pid == 0)
		{
			# Reads every query, writes down its name, never answers.
			while (1)
			{
				my $pkt;
				next unless defined $sock->recv($pkt, 4096);
				my ($pos, @labels) = (12);
				while ($pos < length $pkt)
				{
					my $n = ord substr($pkt, $pos, 1);
					last if $n == 0 || $n > 63;
					push @labels, substr($pkt, $pos + 1, $n);
					$pos += $n + 1;
				}
				open my $out, '>>', $dns_log or exit 1;
				print $out join('.', @labels), "\n";
				close $out;
			}
		}
		close $sock;
		push @children, $pid;
		$resolver_ok = 1;
	}
	else
	{
		diag('no private resolver: /etc/resolv.conf has nameservers (' . join(', ', @ns)
			  . ') or 127.0.0.1:53 cannot be bound; run under scripts/test');
	}
}

sub dns_queries
{
	my ($name) = @_;
	return 0 unless -e $dns_log;
	return scalar grep { lc($_) eq lc($name) } split /\n/, slurp_file($dns_log);
}

# --- the listeners ----------------------------------------------------------

# A loopback listener; returns (socket, port).
sub listener
{
	my ($backlog) = @_;
	socket(my $s, PF_INET, SOCK_STREAM, 0) or die "socket: $!";
	bind($s, pack_sockaddr_in(0, inet_aton('127.0.0.1'))) or die "bind: $!";
	listen($s, $backlog) or die "listen: $!";
	my ($port) = unpack_sockaddr_in(getsockname($s));
	return ($s, $port);
}

# Backlog 0, never accepting, filled with connections that stay open.
my ($full, $full_port) = listener(0);
my @fillers;
for (1 .. 3)
{
	socket(my $c, PF_INET, SOCK_STREAM, 0) or die "socket: $!";
	$c->blocking(0);
	connect($c, pack_sockaddr_in($full_port, inet_aton('127.0.0.1')));
	push @fillers, $c;
	usleep(50_000);
}
# Accepts TCP (the kernel does), never speaks TLS.
my ($mute, $mute_port) = listener(16);

# Sockets in state $state (hex, as in /proc/net/tcp) towards 127.0.0.1:$port.
sub tcp_to
{
	my ($port, $state) = @_;
	my $want = sprintf('0100007F:%04X', $port);
	return scalar grep { my @f = split ' '; @f > 3 && $f[2] eq $want && $f[3] eq $state }
	  split /\n/, slurp_file('/proc/net/tcp');
}
my $fillers_waiting = tcp_to($full_port, '02');
cmp_ok($fillers_waiting, '>=', 1, "the backlog-0 listener is full: a filler's SYN goes unanswered");

# --- running and interrupting a call ---------------------------------------

my $seq = 0;
my @times;

# Starts psql running $call (with $set first) in a DO block that reports how
# it ended, then RESETs and runs $next in the same session.
sub start_call
{
	my ($set, $call, $next, $timeout) = @_;
	my $app = 't109_' . ++$seq;
	my ($out, $err) = ('', '');
	my @pre = ('-c', $set);
	push @pre, ('-c', "SET statement_timeout = $timeout") if $timeout;
	my $h = IPC::Run::start(
		[ 'psql', '-XAtq', '-d', $node->connstr('postgres') . " application_name=$app",
		  '-v', 'ON_ERROR_STOP=0', @pre,
		  '-c', qq{DO \$\$ DECLARE t0 timestamptz := clock_timestamp(); BEGIN $call; RAISE NOTICE 'call returned';
		      EXCEPTION WHEN query_canceled THEN
		      RAISE NOTICE 'canceled_at=% elapsed_ms=% sqlstate=% message=%', extract(epoch FROM clock_timestamp()),
		        extract(epoch FROM clock_timestamp() - t0) * 1000, SQLSTATE, SQLERRM; END \$\$;},
		  '-c', 'RESET ALL', '-c', $next ],
		'>', \$out, '2>', \$err);
	return { h => $h, out => \$out, err => \$err, app => $app };
}

sub wait_for
{
	my ($c, $ready) = @_;
	return FakeApi::wait_in_extension($node, $c->{app}, $ready);
}

sub requests_matching { return $fake->requests_matching(@_); }

my $next_sql = "SELECT 'next=' || name FROM anthropic.env_get('$env')";
my $settings = 'SET anthropic.connect_timeout_ms = 60000; SET anthropic.timeout_ms = 60000';

#   name, url (a sub taking the run's label, for a fresh host name),
#   fault, ready (the call waits where it should; a sub taking the url),
#   after (a sub taking the url: evidence after a statement_timeout run).
sub scenario
{
	my (%sc) = @_;
	for my $mode ('cancel', 'statement_timeout', 'terminate')
	{
		my $label = "$sc{name}: $mode";
		my $url = $sc{url}->($seq + 1);
		$fake->clear_faults;
		$fake->clear_requests;
		$fake->fault($sc{fault}) if $sc{fault};
		my $set = "$settings; SET anthropic.base_url = '$url'";
		my $c = start_call($set, "PERFORM anthropic.env_get('$env')", $next_sql,
			$mode eq 'statement_timeout' ? $TIMEOUT_MS : undef);
		if ($mode eq 'statement_timeout')
		{
			# Watches while it runs: the wait ends with the call.
			my $seen = 0;
			while ($c->{h}->pumpable)
			{
				$c->{h}->pump_nb;
				$seen ||= $sc{ready}->($url);
				usleep(10_000);
			}
			$c->{h}->finish;
			my ($elapsed, $msg) = ${ $c->{err} } =~ /elapsed_ms=([\d.]+) sqlstate=57014 message=(.*)/;
			ok(defined $elapsed, "$label: the call ended with SQLSTATE 57014") or diag ${ $c->{err} };
			like($msg // '', qr/statement timeout/, "$label: because of the statement timeout");
			my $over = ($elapsed // 1e9) - $TIMEOUT_MS;
			push @times, sprintf('%s %.0f ms', $label, $over);
			cmp_ok($over, '<', $LIMIT_MS,
				"$label: ended within $LIMIT_MS ms of the $TIMEOUT_MS ms timeout ($over ms late)");
			ok($seen, "$label: the call was waiting in $sc{where}");
			$fake->clear_faults;
			like(${ $c->{out} }, qr/^next=waits$/m, "$label: the same session works afterwards")
			  or diag ${ $c->{out} } . ${ $c->{err} };
			next;
		}
		my $pid = wait_for($c, sub { $sc{ready}->($url) });
		isnt($pid, '', "$label: the call waits in $sc{where}");
		if ($pid eq '')
		{
			$c->{h}->kill_kill;
			next;
		}
		# Still waiting a little later: a real wait is interrupted.
		usleep(100_000);
		if ($mode eq 'cancel')
		{
			my ($sent_at) = split /\|/, $node->safe_psql('postgres',
				"SELECT extract(epoch FROM clock_timestamp()), pg_cancel_backend($pid)");
			$c->{h}->finish;
			my ($canceled_at) = ${ $c->{err} } =~ /canceled_at=([\d.]+) elapsed_ms=\S+ sqlstate=57014/;
			ok(defined $canceled_at, "$label: the call ended with SQLSTATE 57014") or diag ${ $c->{err} };
			my $ms = (($canceled_at // 1e12) - $sent_at) * 1000;
			push @times, sprintf('%s %.0f ms', $label, $ms);
			cmp_ok($ms, '<', $LIMIT_MS, "$label: took effect within $LIMIT_MS ms ($ms ms)");
			$fake->clear_faults;
			like(${ $c->{out} }, qr/^next=waits$/m, "$label: the same session works afterwards")
			  or diag ${ $c->{out} } . ${ $c->{err} };
		}
		else
		{
			my $ms = $node->safe_psql('postgres', "SELECT t_terminate($pid)");
			push @times, sprintf('%s %.0f ms', $label, $ms);
			cmp_ok($ms, '<', $LIMIT_MS, "$label: the backend was gone within $LIMIT_MS ms ($ms ms)");
			$c->{h}->finish;
			like(${ $c->{err} }, qr/terminating connection due to administrator command/,
				"$label: the session was terminated");
			$fake->clear_faults;
			is($node->safe_psql('postgres', "SELECT name FROM anthropic.env_get('$env')"), 'waits',
				"$label: a new session works");
		}
	}
}

SKIP:
{
	skip 'no private resolver on 127.0.0.1 (run under scripts/test)', 12 unless $resolver_ok;
	scenario(
		name => 'DNS resolution',
		where => 'DNS resolution (the resolver saw the query)',
		url => sub { "https://hung-$_[0].example:443" },
		ready => sub { my ($host) = $_[0] =~ m{//([^:/]+)}; dns_queries($host) >= 1 });
}

scenario(
	name => 'TCP connect',
	where => 'connect (its SYN unanswered)',
	url => sub { "http://127.0.0.1:$full_port" },
	ready => sub { tcp_to($full_port, '02') > $fillers_waiting });

scenario(
	name => 'TLS handshake',
	where => 'the TLS handshake (connected, no answer)',
	url => sub { "https://127.0.0.1:$mute_port" },
	ready => sub { tcp_to($mute_port, '01') >= 1 });

scenario(
	name => 'retry backoff',
	where => 'a backoff (the 429 was answered)',
	url => sub { $fake->url },
	fault => { path_regex => "^/v1/environments/$env\$", status => 429, times => 1,
		headers => { 'retry-after' => '30' } },
	ready => sub { requests_matching(qr{^/v1/environments/$env$}, 1) >= 1 });

diag("times: " . join('; ', @times));
is($node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'), $started, 'the server never restarted');
is($node->safe_psql('postgres',
	q{SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 't109_%'}), '0',
	'no interrupted session is left behind');
$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal|was terminated by|PANIC/, 'no backend crashed');

done_testing();
