# Answer conversion of deeply nested answers (issue 13, rules 1 and 4):
# about 3 MB of small containers nested 1,000 deep (12 MB as jsonb), as
# arrays, as objects, and inside a 1,500-key metadata object.  Each is
# converted to the value jsonb_in gives, and a statement_timeout anywhere
# in the call (10 % to 90 % of its time) ends it within 0.5 s: the parse,
# the serialization of raw, the jansson view and the row all check for
# interrupts.  A cancel at 10 to 50 % lands in our conversion, so it must
# also take effect within a quarter of the call's own time, a ratio that
# the machine's load does not move and that a conversion which does not
# check would fail (it would end at the call's end, 50 to 90 % late).
# What does not check is PostgreSQL's copying of the finished row into
# the FunctionScan's tuplestore (about 0.2 s per 40 MB of jsonb on 2 idle
# cores, 3 to 4 times that under the CI matrix's load), so the rows here
# stay near 24 MB: a larger one would measure the load, not our code.
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $fake = FakeApi->start;
END { local $?; $fake->stop if $fake; }
my $node = $fake->new_node('nested');
$node->safe_psql('postgres', $FakeApi::T_TRY);
$node->safe_psql('postgres', 'CREATE CAST (jsonb AS bytea) WITHOUT FUNCTION');
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
	my ($id, $config, $metadata) = @_;
	return '{"type":"environment","id":"' . $id . '","name":"n","description":null,'
	  . '"config":' . $config . ',"metadata":' . $metadata . ',"scope":"organization",'
	  . '"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z","archived_at":null}';
}

my $deep_arrays = ('[' x 1000) . '1' . (']' x 1000);
my $deep_objects = ('{"a":' x 1000) . '"x"' . ('}' x 1000);
my %shapes = (
	arrays => env_text('env_arrays',
		'{"type":"self_hosted","blocks":[' . join(',', ($deep_arrays) x 1500) . ']}', '{}'),
	objects => env_text('env_objects',
		'{"type":"self_hosted","blocks":[' . join(',', ($deep_objects) x 360) . ']}', '{}'),
	metadata => env_text('env_metadata', '{"type":"self_hosted"}',
		'{' . join(',', map { sprintf('"k%05d":%s', (7919 * $_) % 1500, $deep_arrays) } 0 .. 1499) . '}'),
);

sub median { my @s = sort { $a <=> $b } @_; return $s[ $#s / 2 ]; }

for my $shape (sort keys %shapes)
{
	my $id = "env_$shape";
	my $text = $shapes{$shape};
	$fake->fault({ method => 'GET', path_regex => "^/v1/environments/$id\$", status => 200, times => -1,
		body => $text });
	$node->safe_psql('postgres', "DROP TABLE IF EXISTS t_text; CREATE TABLE t_text AS SELECT \$big\$$text\$big\$::text AS t");
	is($node->safe_psql('postgres', "SELECT t_try(\$\$SELECT (e.raw::bytea = (SELECT t::jsonb::bytea FROM t_text))::text FROM anthropic.env_get('$id') e\$\$)"),
		'ok|true', "$shape: raw is jsonb_in's value of the same " . length($text) . ' bytes, byte for byte');
	my @ms = map { $node->safe_psql('postgres', "SELECT t_ms(\$\$SELECT e.id FROM anthropic.env_get('$id') e\$\$)") } 1 .. 3;
	my $call = median(@ms);
	my $jin = median(map { $node->safe_psql('postgres', q{SELECT t_ms('SELECT t::jsonb FROM t_text')}) } 1 .. 3);
	diag(sprintf('%s: %d bytes, env_get %.0f ms, jsonb_in %.0f ms', $shape, length $text, $call, $jin));
	my $latest = 0;
	my $cancelled = 0;
	for my $pct (10, 30, 50, 70, 90)
	{
		my $timeout = int($call * $pct / 100) + 1;
		my ($rc, $out, $err) = $node->psql('postgres', qq{
SET statement_timeout = $timeout;
DO \$\$
DECLARE
	t0 timestamptz := clock_timestamp();
BEGIN
	PERFORM * FROM anthropic.env_get('$id');
	RAISE NOTICE 'returned_ms=%', extract(epoch FROM clock_timestamp() - t0) * 1000;
EXCEPTION WHEN query_canceled THEN
	RAISE NOTICE 'elapsed_ms=%', extract(epoch FROM clock_timestamp() - t0) * 1000;
END \$\$;
RESET statement_timeout;
SELECT 'next=' || name FROM anthropic.env_get('$id');
});
		my ($elapsed) = $err =~ /elapsed_ms=([\d.]+)/;
		my ($returned) = $err =~ /returned_ms=([\d.]+)/;
		is($out, 'next=n', "$shape: the session works after a timeout at $pct %");
		diag(sprintf('%s: timeout %d ms (%d %%): %s', $shape, $timeout, $pct,
			defined $elapsed ? sprintf('cancelled %.0f ms late', $elapsed - $timeout) : 'returned'));
		if (defined $elapsed)
		{
			$cancelled++;
			$latest = $elapsed - $timeout if $elapsed - $timeout > $latest;
			cmp_ok($elapsed - $timeout, '<', $call / 4,
				sprintf('%s: the cancel at %d %% took effect within a quarter of the call (%.0f ms late, call %.0f ms)',
					$shape, $pct, $elapsed - $timeout, $call))
			  if $pct <= 50;
		}
		else
		{
			# Returned before the timeout could fire: only possible when it
			# was faster than this run's median.
			ok(defined $returned && $returned < $timeout + 500,
				"$shape: at $pct % the call returned (" . ($returned // 'no answer') . " ms) rather than being cancelled late");
		}
	}
	diag(sprintf('%s: %d of 5 timeouts cancelled the call, the latest %.0f ms after the timeout', $shape, $cancelled, $latest));
	cmp_ok($cancelled, '>=', 3, "$shape: at least 3 of 5 timeouts cancelled the call");
	cmp_ok($latest, '<', 500, sprintf('%s: every cancel took effect within 0.5 s (latest %.0f ms late)', $shape, $latest));
}

$node->stop;
done_testing();
