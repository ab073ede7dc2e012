# Review of issue 13, rule 4 (break-it, commit b143d26): peak memory of the
# conversion against jsonb_in's on the same text, as VmHWM of the backend
# (/proc/self/status, read by the backend itself) above a fresh backend's.
# The CHANGELOG says the conversion uses less memory than jsonb_in.  An
# environment whose config holds 1.6 million numbers written 1e308 (9.6 MB)
# is viewed in full by the shallow jansson view (config's array is at depth
# 3), and per number scalar_to_json leaves numeric_abs's copy and
# numeric_out's 309-character text in the call's context until it ends.
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $fake = FakeApi->start;
END { local $?; $fake->stop if $fake; }
my $node = $fake->new_node('review951');
$node->safe_psql('postgres', 'CREATE TABLE t_text (id text PRIMARY KEY, t text)');
$node->safe_psql('postgres', q{
CREATE FUNCTION t_hwm() RETURNS bigint LANGUAGE sql AS $$
SELECT (regexp_match(pg_read_file('/proc/self/status'), 'VmHWM:\s*(\d+) kB'))[1]::bigint $$;
});

sub env_text
{
	my ($id, $config) = @_;
	return '{"type":"environment","id":"' . $id . '","name":"n","description":null,'
	  . '"config":' . $config . ',"metadata":{},"scope":"organization",'
	  . '"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z","archived_at":null}';
}

my %shapes = (
	env_e308 => '{"type":"self_hosted","n":[' . join(',', ('1e308') x 1_600_000) . ']}',
	env_ints => '{"type":"self_hosted","n":[' . join(',', map { $_ % 1000 } 1 .. 2_200_000) . ']}',
);
for my $id (sort keys %shapes)
{
	my $text = env_text($id, $shapes{$id});
	$fake->fault({ method => 'GET', path_regex => "^/v1/environments/$id\$", status => 200, times => -1, body => $text });
	$node->safe_psql('postgres', "INSERT INTO t_text VALUES ('$id', \$big\$$text\$big\$)");
	# Each in a backend of its own: VmHWM only grows.
	my $base = $node->safe_psql('postgres', 'SELECT t_hwm()');
	my ($size_call, $hwm_call) = split /\n/,
	  $node->safe_psql('postgres', "SELECT pg_column_size(raw) FROM anthropic.env_get('$id'); SELECT t_hwm()");
	my ($size_jin, $hwm_jin) = split /\n/,
	  $node->safe_psql('postgres', "SELECT pg_column_size(t::jsonb) FROM t_text WHERE id = '$id'; SELECT t_hwm()");
	is($size_call, $size_jin, "$id: raw has jsonb_in's size ($size_jin bytes)");
	my ($c, $j) = ($hwm_call - $base, $hwm_jin - $base);
	diag(sprintf('%s (%d bytes): peak %d MB against jsonb_in %d MB', $id, length $text, $c / 1024, $j / 1024));
	cmp_ok($c, '<=', 2 * $j, sprintf('%s (%d bytes): env_get peaks at most at 2 x jsonb_in (%d MB vs %d MB above a fresh backend, %.1f x)',
		$id, length $text, $c / 1024, $j / 1024, $c / $j));
}

$node->stop;
done_testing();
