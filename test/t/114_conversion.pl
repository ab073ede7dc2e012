# Answer conversion (issue 13, rule 4).
#   - raw keeps every number as the server wrote it: 0.1, 1e300, 1e400,
#     -1e500 and a 400-digit integer, which jansson alone refuses;
#   - building the row of an environment whose metadata has 100,000 keys
#     takes at most 4 times what jsonb_in takes on the same text (median of
#     5 alternating runs, timed in SQL; bench/conversion.pl has the figures;
#     the bound here is generous so that it never fails on 2 loaded cores);
#   - the row is right: 100,000 keys, equal to jsonb_in's value;
#   - a statement_timeout that fires while a 100,000-key answer is being
#     fetched and converted ends the call within 0.5 s of the timeout, and
#     so does one during a 600,000-key object (about 8 MB, keys out of
#     order).
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $fake = FakeApi->start;
my $node = $fake->new_node('conversion');
$node->safe_psql('postgres', $FakeApi::T_TRY);

sub env_text
{
	my ($id, $metadata) = @_;
	return '{"type":"environment","id":"' . $id . '","name":"n","description":null,'
	  . '"config":{"type":"self_hosted"},"metadata":' . $metadata . ',"scope":"organization",'
	  . '"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z","archived_at":null}';
}

# Numbers as written.
my $digits400 = '1234567890' x 40;
$fake->fault({ method => 'GET', path_regex => '^/v1/environments/env_num$', status => 200, times => -1,
	body => env_text('env_num', qq({"a":0.1,"b":1e300,"c":1e400,"d":-1e500,"e":$digits400,"f":1e-400})) });
is($node->safe_psql('postgres', q{SELECT t_try($$SELECT (raw->'metadata')::text FROM anthropic.env_get('env_num')$$)}),
	'ok|{"a": 0.1, "b": 1' . ('0' x 300) . ', "c": 1' . ('0' x 400) . ', "d": -1' . ('0' x 500)
	  . qq(, "e": $digits400, "f": 0.) . ('0' x 399) . '1}',
	'raw keeps 0.1, 1e300, 1e400, -1e500, 1e-400 and a 400-digit integer, each as the number written');

# Numbers written short but huge: each would print as 130,001 characters.
# The jansson view (config is read whole) reads them as 0 without printing
# them, so 20,000 of them cost no more than any other 20,000 numbers.
my $huge = join(',', map { $_ % 2 ? '1e130000' : '-1e-16000' } 1 .. 20_000);
$fake->fault({ method => 'GET', path_regex => '^/v1/environments/env_huge$', status => 200, times => -1,
	body => '{"type":"environment","id":"env_huge","name":"n","description":null,'
	  . '"config":{"type":"self_hosted","n":[' . $huge . ']},"metadata":{},"scope":"organization",'
	  . '"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z","archived_at":null}' });
is($node->safe_psql('postgres', q{SET statement_timeout = '5s'; SELECT t_try($$SELECT jsonb_array_length(config->'n') || ' ' || ((raw->'config'->'n'->>0)::numeric = 1e130000) || ' ' || ((config->'n'->>1)::numeric = -1e-16000) FROM anthropic.env_get('env_huge')$$)}),
	'ok|20000 true true', '20,000 numbers like 1e130000 convert within 5 s and are kept');

# 100,000 keys: strings, integers and reals.
my $n = 100_000;
my $meta = '{' . join(',', map {
	my $v = $_ % 3 == 0 ? qq("value $_") : $_ % 3 == 1 ? $_ : "$_.25";
	sprintf('"key%06d":%s', $_, $v)
} 1 .. $n) . '}';
my $big = env_text('env_big', $meta);
$fake->fault({ method => 'GET', path_regex => '^/v1/environments/env_big$', status => 200, times => -1,
	body => $big });
$node->safe_psql('postgres', "CREATE TABLE t_text AS SELECT \$big\$$big\$big\$::text AS t");
$node->safe_psql('postgres', q{
CREATE FUNCTION t_ms(q text) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
	t0 timestamptz := clock_timestamp();
BEGIN
	EXECUTE q;
	RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
END $$;
});

is($node->safe_psql('postgres', q{SELECT count(*) FROM jsonb_object_keys((SELECT metadata FROM anthropic.env_get('env_big')))}),
	$n, "the metadata column has all $n keys");
is($node->safe_psql('postgres', q{SELECT e.raw = (SELECT t::jsonb FROM t_text) FROM anthropic.env_get('env_big') e}),
	't', "raw equals jsonb_in's value of the same text");

my (@row, @jin);
for (1 .. 5)
{
	push @row, $node->safe_psql('postgres', q{SELECT t_ms($$SELECT e.id FROM anthropic.env_get('env_big') e$$)});
	push @jin, $node->safe_psql('postgres', q{SELECT t_ms('SELECT t::jsonb FROM t_text')});
}
sub median { my @s = sort { $a <=> $b } @_; return $s[ $#s / 2 ]; }
my ($mrow, $mjin) = (median(@row), median(@jin));
my $ratio = $mrow / $mjin;
diag(sprintf('%d keys (%d bytes): env_get row %.1f ms, jsonb_in %.1f ms, ratio %.2f',
	$n, length $big, $mrow, $mjin, $ratio));
cmp_ok($ratio, '<', 4, sprintf('building the row takes less than 4 x jsonb_in (%.2f x)', $ratio));

# A timeout in the middle of it: half the call's median time.
my $timeout = int($mrow / 2) + 1;
# Runs env_get(id) under a statement_timeout of $ms; the ms it took to be
# cancelled (undef if it returned), and what $after printed.
sub cancelled_after
{
	my ($id, $ms, $after) = @_;
	my ($rc, $out, $err) = $node->psql('postgres', qq{
SET statement_timeout = $ms;
DO \$\$
DECLARE
	t0 timestamptz := clock_timestamp();
BEGIN
	PERFORM * FROM anthropic.env_get('$id');
	RAISE NOTICE 'returned';
EXCEPTION WHEN query_canceled THEN
	RAISE NOTICE 'elapsed_ms=%', extract(epoch FROM clock_timestamp() - t0) * 1000;
END \$\$;
RESET statement_timeout;
$after
});
	my ($elapsed) = $err =~ /elapsed_ms=([\d.]+)/;
	diag($err) unless defined $elapsed;
	return ($elapsed, $out);
}
my ($elapsed, $r) = cancelled_after('env_big', $timeout, q{SELECT 'next=' || name FROM anthropic.env_get('env_num');});
ok(defined $elapsed, "a statement_timeout of $timeout ms cancels the call");
cmp_ok(($elapsed // 1e9) - $timeout, '<', 500, 'within 0.5 s of the timeout (' . (($elapsed // 0) - $timeout) . ' ms late)');
is($r, 'next=n', 'the session works afterwards');

# MB of short keys in one object, not in order (jsonb_in neither
# checks for interrupts nor can stop its key sort): a timeout in the middle
# of the conversion ends the call within 0.5 s.
my $nk = 600_000;
my $wide = '{' . join(',', map { sprintf('"k%07d":1', ($_ * 7919) % $nk) } 0 .. $nk - 1) . '}';
$fake->fault({ method => 'GET', path_regex => '^/v1/environments/env_wide$', status => 200, times => -1,
	body => env_text('env_wide', $wide) });
undef $wide;
my $wide_ms = $node->safe_psql('postgres', q{SELECT t_ms($$SELECT e.id FROM anthropic.env_get('env_wide') e$$)});
is($node->safe_psql('postgres', q{SELECT count(*) FROM jsonb_object_keys((SELECT metadata FROM anthropic.env_get('env_wide')))}),
	$nk, "the metadata column has all $nk keys");
my $wide_timeout = int($wide_ms * 0.6) + 1;
($elapsed) = cancelled_after('env_wide', $wide_timeout, '');
diag("$nk keys: the call takes $wide_ms ms; timeout $wide_timeout ms");
ok(defined $elapsed, "a statement_timeout of $wide_timeout ms cancels a $nk-key conversion");
cmp_ok(($elapsed // 1e9) - $wide_timeout, '<', 500, 'within 0.5 s of the timeout (' . (($elapsed // 0) - $wide_timeout) . ' ms late)');

$node->stop;
done_testing();
