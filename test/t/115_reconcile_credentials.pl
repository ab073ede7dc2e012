# Reconciliation and credentials (issue 13, item 5).  An ack whose answer
# was lost (the fake acts on it, then closes the connection) is retried
# and meets a 409; telling whether the lost attempt succeeded needs a GET
# of the item, which takes the API key only.
#   - with the API key configured (and the environment key for the work
#     calls), the ack returns the item, and the fake saw exactly one GET of
#     it, sent with the API key;
#   - with only the environment key, the call does not fail as
#     unauthorized (28000, as it did): it raises the 409's own error
#     (55000) with a DETAIL saying that the earlier attempt may have
#     succeeded and why it could not be checked; no GET was sent.
use strict;
use warnings;

use FakeApi;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $EK = 'sk-ant-env-reconcile-test';
my $fake = FakeApi->start('--environment-key', $EK);
my $node = $fake->new_node('reconcile_credentials');
$node->safe_psql('postgres', $FakeApi::T_TRY);
my $env = $node->safe_psql('postgres',
	q{SELECT id FROM anthropic.env_create('{"name": "rc", "config": {"type": "self_hosted"}}')});
like($env, qr/^env_/, 'created a self-hosted environment');

sub lost_ack
{
	my ($settings) = @_;
	my $item = $fake->call('POST', "/_fake/environments/$env/work", {})->{id};
	my $polled = $node->safe_psql('postgres',
		"$settings SELECT t_try(\$q\$SELECT id FROM anthropic.work_poll('$env')\$q\$)");
	is($polled, "ok|$item", 'polled the enqueued item');
	$fake->clear_requests;
	$fake->fault({ method => 'POST', path_regex => '/ack$', close => JSON::PP::true, after => JSON::PP::true,
		times => 1 });
	my $r = $node->safe_psql('postgres',
		"$settings SET anthropic.max_retries = 2; SELECT t_try(\$q\$SELECT state FROM anthropic.work_ack('$env', '$item')\$q\$)");
	$fake->clear_faults;
	my @gets = grep { $_->{method} eq 'GET' && $_->{path} eq "/v1/environments/$env/work/$item" } @{ $fake->requests };
	my @acks = grep { $_->{path} =~ m{/ack$} } @{ $fake->requests };
	return ($r, \@gets, \@acks, $item);
}

my ($r, $gets, $acks) = lost_ack("SET anthropic.environment_key = '$EK';");
is($r, 'ok|starting', 'with the API key: the lost ack is reconciled, the item returned');
is(scalar @$acks, 3, 'the fake saw the lost ack and its two retries (a 409 is retried, as in the SDKs)');
is(scalar @$gets, 1, 'and one GET of the item');
is($gets->[0]{headers}{'x-api-key'}, $FakeApi::KEY, 'sent with the API key');

($r, $gets, $acks) = lost_ack("SET anthropic.api_key = ''; SET anthropic.environment_key = '$EK';");
like($r, qr/^err\|55000\|/, 'with only the environment key: the 409 is raised (55000), not 28000') or diag $r;
like($r, qr/An earlier attempt may have succeeded; telling needs a GET with the API key, and none is configured\./,
	'the DETAIL says why the result could not be checked');
is(scalar @$acks, 3, 'the fake saw the lost ack and its two retries (a 409 is retried, as in the SDKs)');
is(scalar @$gets, 0, 'no GET was sent');
ok(!grep({ defined $_->{headers}{'x-api-key'} } @$acks), 'the acks carried no API key');

$node->stop;
done_testing();
