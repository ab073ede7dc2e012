# One session keeps one connection to the API: across many calls, error
# answers and a cancel during a backoff.  A cancel in mid-transfer drops
# that connection (its answer is half read), and the next call opens one.
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $fake = FakeApi->start;
my $node = $fake->new_node('reuse');
my $id = $node->safe_psql('postgres', q{SELECT id FROM anthropic.env_create('{"name": "reuse"}')});

my $bg = $node->background_psql('postgres', on_error_stop => 0);
my $pid = $bg->query_safe('SELECT pg_backend_pid()');
$fake->call('POST', '/_fake/reset');
$fake->call('POST', '/_fake/environments/raw',
	{ id => $id, type => 'environment', name => 'reuse', config => { type => 'cloud' }, metadata => {},
	  created_at => '2026-11-28T10:00:00Z', updated_at => '2026-11-28T10:00:00Z',
	  archived_at => undef, description => undef, scope => 'organization' });

sub opened { return $fake->stats->{v1_connections_opened}; }

# 1,000 calls, one of every hundred a 404.
my $n = $bg->query_safe(qq{SELECT count(*) FROM generate_series(1, 1000) g,
	LATERAL anthropic.env_get(CASE WHEN g % 100 = 0 THEN 'env_missing_' || g ELSE '$id' END, true) e
	WHERE e.id IS NOT NULL});
is($n, '990', '1,000 calls, 10 of them 404s');
is(opened(), 1, 'they used one TCP connection');

# A cancel while waiting out a backoff: the transfer had finished, so the
# connection stays usable.
$fake->fault({ path_regex => '^/v1/environments/', status => 429, times => 1, headers => { 'retry-after' => '30' } });
$bg->query_until(qr/go/, "\\echo go\nSELECT anthropic.env_get('$id');\n");
usleep(300_000);
$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
usleep(200_000);
is($bg->query("SELECT count(*) FROM generate_series(1, 100) g, LATERAL anthropic.env_get('$id' || substr(g::text, 1, 0)) e"),
	'100', 'the session works after a cancel during a backoff');
is(opened(), 1, 'and still uses its one connection');

# A cancel in mid-transfer: that connection is closed, exactly one new one opens.
$fake->fault({ path_regex => '^/v1/environments/', delay_ms => 5000, times => 1 });
$bg->query_until(qr/go2/, "\\echo go2\nSELECT anthropic.env_get('$id');\n");
usleep(300_000);
$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
usleep(200_000);
is($bg->query("SELECT count(*) FROM generate_series(1, 100) g, LATERAL anthropic.env_get('$id' || substr(g::text, 1, 0)) e"),
	'100', 'the session works after a cancel in mid-transfer');
is(opened(), 2, 'with exactly one new connection');
$bg->quit;

done_testing();
