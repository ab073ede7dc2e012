# Review of issue 13, rule 4 (break-it, commit b143d26; fixed: the shallow
# view holds only config's type and data's type and id): "Building a row from
# a 100,000-key object or a 64 MB page takes at most 2 x what jsonb_in takes
# on the same text."  114 times a 100,000-key *metadata*, which the shallow
# jansson view skips (more than 256 members).  The same 100,000 keys in an
# environment's *config*, or 600 config keys in each of the 1,000
# environments of a page, are all built into the view (depth <= 4), and
# every number there is run through numeric_abs, numeric_cmp and
# numeric_out (1e308 prints as 309 digits) and strtod, although no check or
# typed column reads more of config than config.type.
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $fake = FakeApi->start;
END { local $?; $fake->stop if $fake; }
my $node = $fake->new_node('review950');
$node->safe_psql('postgres', $FakeApi::T_TRY);
$node->safe_psql('postgres', 'CREATE TABLE t_text (id text PRIMARY KEY, t text)');
$node->safe_psql('postgres', q{
CREATE FUNCTION t_ms(q text) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
	t0 timestamptz := clock_timestamp();
BEGIN
	EXECUTE q;
	RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
END $$;
});

sub env_text
{
	my ($id, $config) = @_;
	return '{"type":"environment","id":"' . $id . '","name":"n","description":null,'
	  . '"config":' . $config . ',"metadata":{},"scope":"organization",'
	  . '"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z","archived_at":null}';
}
sub median { my @s = sort { $a <=> $b } @_; return $s[ $#s / 2 ]; }

# Median of 5 alternating runs of the call and of jsonb_in on the same text.
sub ratio_of
{
	my ($label, $id, $call_sql) = @_;
	my (@call, @jin);
	for (1 .. 5)
	{
		push @call, $node->safe_psql('postgres', "SELECT t_ms(\$\$$call_sql\$\$)");
		push @jin, $node->safe_psql('postgres', "SELECT t_ms(\$\$SELECT pg_column_size(t::jsonb) FROM t_text WHERE id = '$id'\$\$)");
	}
	my ($c, $j) = (median(@call), median(@jin));
	my $len = $node->safe_psql('postgres', "SELECT length(t) FROM t_text WHERE id = '$id'");
	diag(sprintf('%s (%d bytes): %.0f ms against jsonb_in %.0f ms, %.2f x', $label, $len, $c, $j, $c / $j));
	# Rule 4 says 2 x; bench/conversion.pl measures it.  The bound here is
	# generous so that it never fails on 2 loaded cores, and still far
	# below what the full view cost (3 to 7.5 x).
	cmp_ok($c / $j, '<', 2.5, sprintf('%s (%d bytes): the call takes less than 2.5 x jsonb_in (%.0f ms vs %.0f ms, %.2f x)',
		$label, $len, $c, $j, $c / $j));
}

# 1. One environment whose config has 100,000 keys.
my %get = (
	env_cfg_mixed => '{"type":"self_hosted",' . join(',', map {
		my $v = $_ % 3 == 0 ? qq("value $_") : $_ % 3 == 1 ? $_ : "$_.25";
		sprintf('"key%06d":%s', $_, $v) } 1 .. 100_000) . '}',
	env_cfg_e308 => '{"type":"self_hosted",' . join(',', map { sprintf('"key%06d":1e308', $_) } 1 .. 100_000) . '}',
);
for my $id (sort keys %get)
{
	my $text = env_text($id, $get{$id});
	$fake->fault({ method => 'GET', path_regex => "^/v1/environments/$id\$", status => 200, times => -1, body => $text });
	$node->safe_psql('postgres', "INSERT INTO t_text VALUES ('$id', \$big\$$text\$big\$)");
	is($node->safe_psql('postgres', "SELECT count(*) FROM jsonb_object_keys((SELECT config FROM anthropic.env_get('$id')))"),
		100_001, "$id: the config column has every key");
	ratio_of("env_get, 100,000-key config ($id)", $id, "SELECT e.id FROM anthropic.env_get('$id') e");
}

# 2. A page of 1,000 environments, each with 600 config keys (8 MB; the
#    fault body is limited to 10 MiB, a 64 MB page behaves the same).
my $page = '{"data":[' . join(',', map {
	env_text(sprintf('env_p%04d', $_), '{"type":"self_hosted",' . join(',', map { sprintf('"k%03d":1e308', $_) } 1 .. 600) . '}')
} 1 .. 1000) . '],"next_page":null}';
$fake->fault({ method => 'GET', path_regex => '^/v1/environments$', status => 200, times => -1, body => $page });
$node->safe_psql('postgres', "INSERT INTO t_text VALUES ('page', \$big\$$page\$big\$)");
is($node->safe_psql('postgres', 'SELECT count(*) FROM anthropic.env_list(false, 1000)'), 1000, 'env_list gives the 1,000 rows');
ratio_of('env_list_page, 1,000 environments of 600 config keys', 'page', 'SELECT pg_column_size(anthropic.env_list_page(1000))');
ratio_of('env_list rows, the same page', 'page', 'SELECT count(*) FROM anthropic.env_list(false, 1000)');

$node->stop;
done_testing();
