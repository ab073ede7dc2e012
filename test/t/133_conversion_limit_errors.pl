# Review of issue 13, rules 1 and 4 (break-it, commit b143d26): valid JSON
# that jsonb cannot hold must be reported the way 122 settled for \u0000:
# 08006 with a detail "The answer cannot be stored as jsonb: <jsonb_in's
# words>", not "not valid JSON".  ae_answer_to_jsonb (src/convert.c) names
# only 22P05/22021 so; jsonb's limits (54000: the writer's "total size of
# jsonb array elements exceeds the maximum of 268435455 bytes") and
# numeric_in's 22003 ("value overflows numeric format") still read as a
# syntax error.  jsonb_in raises 54000 and 22003 for the same texts.
use strict;
use warnings;

use FakeApi;
use HTTP::Tiny;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $fake = FakeApi->start;
END { local $?; $fake->stop if $fake; }
my $node = $fake->new_node('review952');
$node->safe_psql('postgres', $FakeApi::T_TRY);
$node->safe_psql('postgres', 'CREATE TABLE t_text (id text PRIMARY KEY, t text)');

sub env_text
{
	my ($id, $config) = @_;
	return '{"type":"environment","id":"' . $id . '","name":"n","description":null,'
	  . '"config":' . $config . ',"metadata":{},"scope":"organization",'
	  . '"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z","archived_at":null}';
}

sub compare
{
	my ($label, $id, $call_sql) = @_;
	my $jin = $node->safe_psql('postgres', "SELECT t_try(\$\$SELECT pg_column_size(t::jsonb) FROM t_text WHERE id = '$id'\$\$)");
	my $ext = $node->safe_psql('postgres', "SELECT t_try(\$\$$call_sql\$\$)");
	my (undef, $jstate, $jmsg) = split /\|/, $jin;
	like($jin, qr/^err\|/, "$label: jsonb_in refuses the text ($jin)");
	like($ext, qr/^err\|08006\|malformed answer/, "$label: a malformed answer");
	like($ext, qr/cannot be stored as jsonb: \Q$jmsg\E/,
		"$label: the detail says it cannot be stored as jsonb, in jsonb_in's words ($jstate $jmsg)")
	  or diag("extension: $ext");
	unlike($ext, qr/not valid JSON/, "$label: it is not called invalid JSON");
}

# 1. A number numeric cannot hold (valid JSON, 16 bytes).
my $text = env_text('env_ovf', '{"type":"self_hosted","n":1e1000000}');
$fake->fault({ method => 'GET', path_regex => '^/v1/environments/env_ovf$', status => 200, times => -1, body => $text });
$node->safe_psql('postgres', "INSERT INTO t_text VALUES ('env_ovf', \$big\$$text\$big\$)");
compare('1e1000000', 'env_ovf', q{SELECT id FROM anthropic.env_get('env_ovf')});

# 2. A 48 MB page (under anthropic.max_response_bytes' 64 MB) of 6
#    environments whose config holds 4 million zeros: 290 MB as jsonb,
#    more than a jsonb container may hold.
my $http = HTTP::Tiny->new(timeout => 120, keep_alive => 1);
for my $i (1 .. 6)
{
	my $env = env_text("env_b$i", '{"type":"self_hosted","s":[' . join(',', ('0') x 4_000_000) . ']}');
	$http->post($fake->url . '/_fake/environments/raw', { content => $env,
		headers => { 'content-type' => 'application/json' } })->{success} or die 'raw env';
}
my $r = $http->get($fake->url . '/v1/environments?limit=1000', { headers => {
	'x-api-key' => $FakeApi::KEY, 'anthropic-version' => '2023-06-01',
	'anthropic-beta' => 'managed-agents-2026-04-01' } });
die "page: $r->{status}" unless $r->{success};
$node->safe_psql('postgres', "INSERT INTO t_text VALUES ('page', \$big\$$r->{content}\$big\$)");
diag(length($r->{content}) . ' bytes of page');
compare('a 48 MB page over jsonb\'s size limit', 'page', 'SELECT pg_column_size(anthropic.env_list_page(1000))');

$node->stop;
done_testing();
