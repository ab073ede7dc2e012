# Review 14b: an ack whose answer was lost but which the server applied,
# with only an environment key configured (anthropic.api_key empty, a keys
# file).  The repeat of the ack (the transport's retry within the poller's
# chain, then the keeper's AeCall.repeats ack) meets 409; reconcile() needs
# a GET with the API key and, with none, lets the 409 stand: the poller
# drops the row (409 is not "may have acted") and the keeper, when it gets
# there, releases it (apply_ack).  The server has the item acked by us with
# no lease, and the database holds nothing: the item is lost.  The
# NO_HEARTBEAT claim, which the environment key opens, would tell whose ack
# it was.
# Fixed: without an API key the NO_HEARTBEAT claim decides a 409.
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $KE = 'key-of-the-env-5d0c8e21aa47';
my $fake = FakeApi->start;
END { local $?; $fake->stop if $fake; }
$fake->call('POST', '/_fake/lease', { ttl_seconds => 10 });
my $node = $fake->new_node('reackenvkey',
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '1h'\n");

sub sq { return $node->safe_psql($_[1] // 'postgres', $_[0]); }
sub poll_until { return FakeApi::poll_until($node, @_); }

like(poll_until(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('anthropic_env keeper', 'anthropic_env poller')}, '2', 10),
	qr/^2$/, 'the keeper and the poller run');

my $env = sq(q{SELECT id FROM anthropic.env_create('{"name": "envkey-only", "config": {"type": "self_hosted"}}')});
$fake->call('POST', "/_fake/environments/$env/key", { key => $KE });
my $file = $node->basedir . '/work_credentials';
open(my $fh, '>', $file) or die $!;
print $fh "$env $KE\n";
close $fh;
chmod 0600, $file;
# Only the environment's key from here on.
$node->append_conf('postgresql.conf', "anthropic.environment_keys_file = '$file'\nanthropic.api_key = ''\n");
$node->reload;
usleep(500_000);
is(sq(q{SELECT current_setting('anthropic.api_key') = ''}), 't', 'no API key is configured');

# The first ack is carried out, its answer lost.
$fake->fault({ method => 'POST', path_regex => "/environments/$env/work/[^/]+/ack\$", close => JSON::PP::true, after => JSON::PP::true, times => 1 });
$fake->clear_requests;
my $w = $fake->call('POST', "/_fake/environments/$env/work", {})->{id};
sq("SELECT anthropic.serve('$env', 1)");
ok(FakeApi::wait_for(sub { scalar($fake->requests_for(qr{/work/\Q$w\E/ack$})) >= 2 }, 8), 'the keeper acks the item again');
usleep(1_500_000);
my @r = map { "$_->{method} $_->{path} " . ($_->{status} // '-') } grep { $_->{path} =~ /\Q$w\E/ } @{ $fake->requests };
diag(join("\n", @r));
is(sq("SELECT state || '|' || coalesce(error, '') FROM anthropic.leases WHERE work_id = '$w'"), 'ready|',
	'the item whose first ack was applied is held, not released');
is(sq("SELECT count(*) FROM anthropic.work_claim('$env', '2s')"), '1', 'a session can take it');

$node->stop;
done_testing();
