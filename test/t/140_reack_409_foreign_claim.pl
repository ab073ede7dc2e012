# Review 14c: with only an environment key, the keeper's repeat of an
# unanswered ack takes a 409 as possibly its own (apply_ack) and sends the
# NO_HEARTBEAT claim.  README: "another worker's claim makes it a 412:
# released".  But every unacked lease has beat_maybe_acted set (poller_round,
# load_held, adopt_unconfirmed), so apply_beat() reconciles that 412 (an
# active lease with a heartbeat other than the one sent) as its own claim's
# success: the item is held here, offered to sessions, while another worker
# holds it.  Here our acks never reach the server (503), another worker acks
# and claims the item, then our keeper's ack gets through (409).
# Fixed: the re-ack sent no claim, so the claim's 412 is another worker's.
use strict;
use warnings;

use FakeApi;
use HTTP::Tiny;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $KE = 'key-of-the-env-7a1f3c99bb02';
my $fake = FakeApi->start;
END { local $?; $fake->stop if $fake; }
$fake->call('POST', '/_fake/lease', { ttl_seconds => 10 });
my $node = $fake->new_node('reackforeign',
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '1h'\n");

sub sq { return $node->safe_psql($_[1] // 'postgres', $_[0]); }
sub poll_until { return FakeApi::poll_until($node, @_); }

# Another worker, talking to the server directly.
my $http = HTTP::Tiny->new(timeout => 5);
sub foreign
{
	my ($path) = @_;
	my $res = $http->request('POST', $fake->{url} . $path, {
		headers => { authorization => "Bearer $KE", 'anthropic-version' => '2023-06-01',
			'anthropic-beta' => 'managed-agents-2026-04-01', 'content-type' => 'application/json' },
		content => '{}' });
	return ($res->{status}, $res->{content});
}

like(poll_until(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('anthropic_env keeper', 'anthropic_env poller')}, '2', 10),
	qr/^2$/, 'the keeper and the poller run');
my $env = sq(q{SELECT id FROM anthropic.env_create('{"name": "reack-foreign", "config": {"type": "self_hosted"}}')});
$fake->call('POST', "/_fake/environments/$env/key", { key => $KE });
my $file = $node->basedir . '/work_credentials';
open(my $fh, '>', $file) or die $!;
print $fh "$env $KE\n";
close $fh;
chmod 0600, $file;
$node->append_conf('postgresql.conf', "anthropic.environment_keys_file = '$file'\nanthropic.api_key = ''\n");
$node->reload;
usleep(500_000);
is(sq(q{SELECT current_setting('anthropic.api_key') = ''}), 't', 'no API key is configured');

# Our acks are not carried out (a gateway's 503): "may have acted", owed again.
$fake->fault({ method => 'POST', path_regex => "/environments/$env/work/[^/]+/ack\$", status => 503, times => -1 });
$fake->clear_requests;
my $w = $fake->call('POST', "/_fake/environments/$env/work", {})->{id};
sq("SELECT anthropic.serve('$env', 1)");
ok(FakeApi::wait_for(sub { scalar($fake->requests_for(qr{/work/\Q$w\E/ack$})) >= 3 }, 10), 'our acks fail');
usleep(1_500_000);
is(sq("SELECT count(*) FROM anthropic.leases WHERE work_id = '$w'"), '1', 'the item is held, its ack owed');

# Right after one of the keeper's 1 s re-acks, another worker takes the item.
my $n = scalar($fake->requests_for(qr{/work/\Q$w\E/ack$}));
ok(FakeApi::wait_for(sub { scalar($fake->requests_for(qr{/work/\Q$w\E/ack$})) > $n }, 3), 'the keeper acks again');
$fake->clear_faults;
my ($s1) = foreign("/v1/environments/$env/work/$w/ack");
my ($s2, $c2) = foreign("/v1/environments/$env/work/$w/heartbeat?expected_last_heartbeat=NO_HEARTBEAT");
is("$s1 $s2", '200 200', 'another worker acks and claims the item');
my $hb = eval { decode_json($c2)->{last_heartbeat} } // '';

# The other worker's claim is one heartbeat; ours is the next.
ok(FakeApi::wait_for(sub { (grep { defined $_->{status} } $fake->requests_for(qr{/work/\Q$w\E/heartbeat$})) >= 2 }, 6), 'our keeper sends its claim');
poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w'", 'lost', 3);
my @r = map { "$_->{method} $_->{path} " . ($_->{status} // '-') } grep { $_->{path} =~ /\Q$w\E/ } @{ $fake->requests };
diag(join("\n", @r));
isnt(sq("SELECT state FROM anthropic.leases WHERE work_id = '$w'"), 'ready',
	'the item another worker claimed is released, not held');
is(sq("SELECT count(*) FROM anthropic.work_claim('$env', '1s')"), '0', 'no session can take it');
my ($s3) = foreign("/v1/environments/$env/work/$w/heartbeat?expected_last_heartbeat=$hb");
is($s3, 200, 'the other worker still holds its lease');

$node->stop;
done_testing();
