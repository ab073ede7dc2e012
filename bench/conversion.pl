# Benchmark (not a test): answer conversion against jsonb_in on the same
# text (issue 13, rule 4).  Two answers, served verbatim by the fake:
#   A. one environment whose metadata has 100,000 keys (about 2 MB), through
#      env_get;
#   B. a page of 1,000 environments with 60 KB of metadata each (about
#      60 MB, under the default anthropic.max_response_bytes of 64 MiB),
#      through env_list; the fake serializes it for every request, and the
#      transfer alone (anthropic.log_requests) is reported too.
# Each figure is the median of BENCH_RUNS runs (default 5), timed in SQL
# with clock_timestamp(); the two sides of a run are measured back to back
# and the ratio is the median of the per-run ratios.  The call includes the
# transfer from the fake over loopback.  Then, for B, a statement_timeout
# at 10 %, 30 %, ..., 90 % of the call's median shows how late a cancel
# takes effect wherever the call is (the largest lateness is reported).
# Run it like a TAP file:
#   ANTHROPIC_ENV_CACHE=... scripts/test --pg 17 --only tap bench/conversion.pl
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $runs = $ENV{BENCH_RUNS} // 5;

my $fake = FakeApi->start;
my $node = $fake->new_node('bench_conversion', conf => "shared_buffers = '256MB'\n");

sub env_text
{
	my ($id, $metadata) = @_;
	return '{"type":"environment","id":"' . $id . '","name":"n","description":null,'
	  . '"config":{"type":"self_hosted"},"metadata":' . $metadata . ',"scope":"organization",'
	  . '"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z","archived_at":null}';
}

my $big = env_text('env_big', '{' . join(',', map {
	my $v = $_ % 3 == 0 ? qq("value $_") : $_ % 3 == 1 ? $_ : "$_.25";
	sprintf('"key%06d":%s', $_, $v)
} 1 .. 100_000) . '}');
# The fake takes no control body over 10 MiB: the page's environments are
# stored one by one, and the page is the fake's own answer, fetched here.
my $chunk = join(',', map { sprintf('"k%04d":"%s"', $_, 'x' . ('y' x 50)) } 1 .. 1000);
for (1 .. 1000)
{
	my $res = $fake->{http}->request('POST', $fake->url . '/_fake/environments/raw',
		{ content => env_text(sprintf('env_%05d', $_), "{$chunk}"), headers => { 'content-type' => 'application/json' } });
	die "storing an environment failed: $res->{status}" unless $res->{success};
}
my $page = `curl -sS --max-time 120 -H 'x-api-key: $FakeApi::KEY' -H 'anthropic-version: 2023-06-01' -H 'anthropic-beta: managed-agents-2026-04-01' '@{[ $fake->url ]}/v1/environments?limit=1000'`;
like($page, qr/^\{/, sprintf('the fake serves a page of %d bytes', length $page));

$fake->fault({ method => 'GET', path_regex => '^/v1/environments/env_big$', status => 200, times => -1, body => $big });

# The texts go in through COPY files: a 64 MB literal is more than psql likes.
my $dir = $PostgreSQL::Test::Utils::tmp_check;
for ([ 'big', $big ], [ 'page', $page ])
{
	open my $fh, '>', "$dir/$_->[0].txt" or die;
	(my $t = $_->[1]) =~ s/\\/\\\\/g;
	print $fh $t, "\n";
	close $fh;
}
$node->safe_psql('postgres', qq{
CREATE TABLE t_text (name text PRIMARY KEY, t text);
CREATE TEMP TABLE l (t text);
COPY l FROM '$dir/big.txt'; INSERT INTO t_text SELECT 'big', t FROM l; TRUNCATE l;
COPY l FROM '$dir/page.txt'; INSERT INTO t_text SELECT 'page', t FROM l;
CREATE FUNCTION t_ms(q text) RETURNS float8 LANGUAGE plpgsql AS \$\$
DECLARE
	t0 timestamptz := clock_timestamp();
BEGIN
	EXECUTE q;
	RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
END \$\$;
});
is($node->safe_psql('postgres', q{SELECT length(t) FROM t_text WHERE name = 'page'}), length $page,
	'the page text is stored as served');

sub median { my @s = sort { $a <=> $b } @_; return $s[ $#s / 2 ]; }

my @rows;
for my $case ([ 'A. 100,000-key object, env_get', 'big', q{SELECT e.id FROM anthropic.env_get('env_big') e} ],
	[ 'B. 60 MB page of 1,000, env_list', 'page', q{SELECT count(*) FROM anthropic.env_list(page_size => 1000)} ])
{
	my ($label, $name, $call) = @$case;
	my (@c, @j, @r);
	for (1 .. $runs)
	{
		my $c = $node->safe_psql('postgres', "SELECT t_ms(\$q\$$call\$q\$)");
		my $j = $node->safe_psql('postgres', "SELECT t_ms(\$q\$SELECT t::jsonb FROM t_text WHERE name = '$name'\$q\$)");
		push @c, $c;
		push @j, $j;
		push @r, $c / $j;
	}
	push @rows, sprintf('| %s | %d | %.1f | %.1f | %.2f |', $label, length($name eq 'big' ? $big : $page),
		median(@c), median(@j), median(@r));
	ok(1, "$label measured");
	my $before = length slurp_file($node->logfile);
	$node->safe_psql('postgres', "SET anthropic.log_requests = on; $call");
	my ($xfer) = substr(slurp_file($node->logfile), $before) =~ /status 200, attempt 1, ([\d.]+) ms/;
	push @rows, sprintf('| %s: the transfer alone | | %s | | |', $label, $xfer // '?');

	next unless $name eq 'page';
	my $m = median(@c);
	my $late = 0;
	for my $f (1, 3, 5, 7, 9)
	{
		my $timeout = int($m * $f / 10) + 1;
		my ($rc, $out, $err) = $node->psql('postgres', qq{
SET statement_timeout = $timeout;
DO \$\$
DECLARE
	t0 timestamptz := clock_timestamp();
BEGIN
	PERFORM count(*) FROM anthropic.env_list(page_size => 1000);
	RAISE NOTICE 'returned';
EXCEPTION WHEN query_canceled THEN
	RAISE NOTICE 'elapsed_ms=%', extract(epoch FROM clock_timestamp() - t0) * 1000;
END \$\$;});
		my ($el) = $err =~ /elapsed_ms=([\d.]+)/;
		$late = ($el - $timeout) if defined $el && $el - $timeout > $late;
		diag(sprintf('statement_timeout %d ms: %s', $timeout, defined $el ? sprintf('ended after %.0f ms', $el) : 'returned'));
	}
	push @rows, sprintf('| B. a statement_timeout at 10-90 %% of the call: latest effect | | %.0f ms late | | |', $late);
}

diag(join "\n", '', '| answer | bytes | conversion, ms | jsonb_in, ms | ratio |', '|---|---|---|---|---|', @rows);
$node->stop;
done_testing();
