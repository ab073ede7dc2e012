# Reliability: the fault matrix of issue 8.
#
# Every fault the fake can inject is tried on a GET (env_get), on the
# creating POST (env_create) and on a state-changing POST that is retried
# like a GET (work_ack on a polled item of a self-hosted environment).  For
# each, the outcome is either "retried and succeeded" or a clear error with
# the SQLSTATE of design.md section 1, and the number of attempts the fake
# saw matches the retry policy of design.md section 3 and wire-notes.md:
#   - anthropic.max_retries = 2 by default: at most 3 attempts;
#   - GET and non-create POSTs retry 408/409/429/5xx, connection errors and
#     timeouts; env_create retries only 429/503/529, x-should-retry: true and
#     a connection that failed before anything was sent;
#   - x-should-retry overrides the status;
#   - a malformed 2xx answer is never retried (08006).
# Everything runs in ONE session: after each fault the same backend is
# alive and its next call succeeds.  Then more than 1,000 faulty calls run in
# one session while its RSS is watched, and a 500 sent after the fake
# created an environment is shown to leave exactly one environment.
use strict;
use warnings;

use FakeApi;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $fake = FakeApi->start;
# The subs below hold $fake, so global destruction may not stop it: do it here.
END { local $?; $fake->stop if $fake; }
my $node = $fake->new_node('faults', conf => "log_min_messages = warning\n");
our $s = $node->background_psql('postgres', on_error_stop => 0);

# Runs a statement that yields one value; returns "ok|value", or
# "err|SQLSTATE|message|detail" for any error other than a cancel.
$s->query_safe($FakeApi::T_TRY);

sub lit { my $v = shift; $v =~ s/'/''/g; return "'$v'"; }

sub try_sql
{
	my ($sql) = @_;
	my $out = $s->query('SELECT t_try(' . lit($sql) . ')');
	chomp $out;
	return $out;
}

our $pid = $s->query_safe('SELECT pg_backend_pid()');
chomp $pid;
my $env = (split /\|/, try_sql(q{SELECT id FROM anthropic.env_create('{"name": "matrix"}')}))[1];
like($env, qr/^env_/, 'created the environment the GETs read');
my $senv = (split /\|/, try_sql(
	q{SELECT id FROM anthropic.env_create('{"name": "matrix-queue", "config": {"type": "self_hosted"}}')}))[1];
like($senv, qr/^env_/, 'created a self-hosted environment for work_ack');

# What each kind of call sends, and how the fake log shows it.
my %kinds = (
	get => { method => 'GET', path_regex => '^/v1/environments/env_[A-Za-z0-9]+$' },
	create => { method => 'POST', path_regex => '^/v1/environments$' },
	ack => { method => 'POST', path_regex => '/work/[^/]+/ack$' },
);
my @kind_order = qw(get create ack);
my $create_seq = 0;

# Prepares one call of a kind: its SQL and the value it yields on success.
sub prepare_call
{
	my ($kind) = @_;
	if ($kind eq 'get')
	{
		return { sql => "SELECT name FROM anthropic.env_get('$env')", ok => 'matrix' };
	}
	if ($kind eq 'create')
	{
		my $name = 'c-' . ++$create_seq;
		return { sql => qq{SELECT name FROM anthropic.env_create('{"name": "$name"}')}, ok => $name,
			name => $name };
	}
	# ack: an item enqueued through the fake and polled through the extension.
	my $item = $fake->call('POST', "/_fake/environments/$senv/work", {})->{id};
	my $polled = try_sql("SELECT id FROM anthropic.work_poll('$senv', reclaim_older_than_ms => 86400000)");
	is($polled, "ok|$item", "ack setup: polled the enqueued item") or diag $polled;
	return { sql => "SELECT state FROM anthropic.work_ack('$senv', '$item')", ok => 'starting',
		item => $item };
}

# The session is alive and its next call succeeds.
sub check_alive
{
	my ($label) = @_;
	$fake->clear_faults;
	my $next = try_sql("SELECT name FROM anthropic.env_get('$env')");
	my $p = $s->query('SELECT pg_backend_pid()');
	chomp $p;
	ok($next eq 'ok|matrix' && $p eq $pid, "$label: same backend, next call succeeds")
	  or diag "next=$next pid=$p (was $pid)";
}

# Runs one case on one kind of call.
#   fault  => fault rule (method/path_regex are filled in per kind)
#   expect => 'ok' or a SQLSTATE
#   attempts => requests the fake must see: a number, or [min, max]
#   set    => SQL run before the call; reset => SQL run after it
#   like   => regex the error text must match
#   created => for env_create: how many environments of that name remain
sub run_case
{
	my (%c) = @_;
	my $kind = $c{kind};
	my $label = "$c{name} on $kind";
	my $call = prepare_call($kind);
	$fake->clear_faults;
	$fake->clear_requests;
	$fake->fault({ %{ $c{fault} }, method => $kinds{$kind}{method},
		path_regex => $kinds{$kind}{path_regex} })
	  if $c{fault};
	$s->query_safe($c{set}) if $c{set};
	my $t0 = time;
	my $res = try_sql($call->{sql});
	my $elapsed = time - $t0;
	if ($c{reset}) { $s->query_safe($c{reset}); }
	my @log = grep { $_->{method} eq $kinds{$kind}{method} && $_->{path} =~ /$kinds{$kind}{path_regex}/ }
	  @{ $fake->requests };
	if ($c{expect} eq 'ok')
	{
		is($res, "ok|$call->{ok}", "$label: retried and succeeded") or diag $res;
	}
	else
	{
		my ($tag, $state) = split /\|/, $res;
		is("$tag|" . ($state // ''), "err|$c{expect}", "$label: fails with SQLSTATE $c{expect}")
		  or diag $res;
	}
	like($res, $c{like}, "$label: the error says why") if $c{like};
	if (ref $c{attempts})
	{
		my ($lo, $hi) = @{ $c{attempts} };
		ok(@log >= $lo && @log <= $hi, "$label: $lo to $hi requests")
		  or diag explain [ map { "$_->{method} $_->{path} " . ($_->{status} // 'none') } @log ];
	}
	elsif (defined $c{attempts})
	{
		is(scalar @log, $c{attempts}, "$label: $c{attempts} attempt(s)")
		  or diag explain [ map { "$_->{method} $_->{path} " . ($_->{status} // 'none') } @log ];
	}
	if ($kind eq 'create' && defined $c{created})
	{
		$fake->clear_faults;
		my $n = try_sql("SELECT count(*) FROM anthropic.env_list() WHERE name = '$call->{name}'");
		if ($c{created} eq '<=1')
		{
			like($n, qr/^ok\|[01]$/, "$label: no duplicate environment");
		}
		else
		{
			is($n, "ok|$c{created}", "$label: $c{created} environment(s) created");
		}
	}
	check_alive($label) unless $c{no_alive};
	return { res => $res, log => \@log, elapsed => $elapsed, call => $call };
}

my $fast = { 'retry-after-ms' => '1' };

# -- 429 with retry-after: 1 (seconds): honoured, then success.
for my $kind (@kind_order)
{
	my $r = run_case(name => '429 retry-after: 1', kind => $kind,
		fault => { status => 429, times => 1, headers => { 'retry-after' => '1' } },
		expect => 'ok', attempts => 2);
	my @t = map { $_->{time} } @{ $r->{log} };
	my $gap = @t == 2 ? $t[1] - $t[0] : 0;
	cmp_ok($gap, '>=', 0.95, "429 retry-after: 1 on $kind: waited about 1 s ($gap s)");
	cmp_ok($gap, '<', 3, "429 retry-after: 1 on $kind: not much longer");
}

# -- 429 with retry-after-ms: 300: honoured; spent retries -> 53400.
for my $kind (@kind_order)
{
	my $r = run_case(name => '429 retry-after-ms: 300', kind => $kind,
		fault => { status => 429, times => 2, headers => { 'retry-after-ms' => '300' } },
		expect => 'ok', attempts => 3);
	my @t = map { $_->{time} } @{ $r->{log} };
	my $ok = @t == 3 && $t[1] - $t[0] >= 0.29 && $t[2] - $t[1] >= 0.29
	  && $t[2] - $t[0] < 2.5;
	ok($ok, "429 retry-after-ms: 300 on $kind: waited 300 ms before each retry")
	  or diag explain \@t;
	run_case(name => '429 retry-after-ms: 300, persistent', kind => $kind,
		fault => { status => 429, times => -1, headers => { 'retry-after-ms' => '300' } },
		expect => '53400', attempts => 3, created => 0, like => qr/after 3 attempts/);
}

# -- Retry delays the server asks for in odd forms: a fractional
# retry-after-ms and an HTTP date are honoured; values that are garbage or
# not positive fall back to the SDK backoff (0.375 to 0.5 s before the
# first retry) instead of hanging or failing; values longer than
# anthropic.max_retry_wait (60 s by default) fail at once, naming the delay.
{
	my @fallback = (
		[ 'retry-after-ms' => 'NaN' ], [ 'retry-after-ms' => '1e309' ], [ 'retry-after-ms' => '-5' ],
		[ 'retry-after-ms' => 'x' ], [ 'retry-after-ms' => '0' ],
		[ 'retry-after' => 'abc' ], [ 'retry-after' => '-1' ], [ 'retry-after' => '' ]);
	my @refused = (
		[ 'retry-after-ms' => '99999999999999', qr/retry after 99999999999999 ms/ ],
		[ 'retry-after' => '1e9', qr/retry after 1000000000000 ms/ ],
		[ 'retry-after' => 'Fri, 31 Dec 9999 23:59:59 GMT', qr/retry after \d{14,} ms/ ]);
	for my $h (@refused)
	{
		my $r = run_case(name => "503 with $h->[0]: '$h->[1]'", kind => 'get',
			fault => { status => 503, times => 1, headers => { $h->[0] => $h->[1] } },
			expect => '58000', attempts => 1, like => $h->[2]);
		ok($r->{elapsed} < 2, "503 with $h->[0]: '$h->[1]': failed at once ($r->{elapsed} s)");
	}
	for my $h (@fallback)
	{
		my $r = run_case(name => "503 with $h->[0]: '$h->[1]'", kind => 'get',
			fault => { status => 503, times => 1, headers => { $h->[0] => $h->[1] } },
			expect => 'ok', attempts => 2);
		my @t = map { $_->{time} } @{ $r->{log} };
		my $gap = @t == 2 ? $t[1] - $t[0] : -1;
		ok($gap >= 0.3 && $gap < 1.5, "503 with $h->[0]: '$h->[1]': default backoff ($gap s)");
	}
	my $r = run_case(name => "503 with retry-after-ms: '250.75'", kind => 'get',
		fault => { status => 503, times => 1, headers => { 'retry-after-ms' => '250.75' } },
		expect => 'ok', attempts => 2);
	my @t = map { $_->{time} } @{ $r->{log} };
	my $gap = @t == 2 ? $t[1] - $t[0] : -1;
	ok($gap >= 0.245 && $gap < 0.6, "a fractional retry-after-ms is honoured ($gap s)");
	my @g = gmtime(time + 3);
	my $date = sprintf('%s, %02d %s %04d %02d:%02d:%02d GMT', (qw(Sun Mon Tue Wed Thu Fri Sat))[ $g[6] ], $g[3],
		(qw(Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec))[ $g[4] ], $g[5] + 1900, @g[ 2, 1, 0 ]);
	$r = run_case(name => 'retry-after as an HTTP date 3 s ahead', kind => 'get',
		fault => { status => 503, times => 1, headers => { 'retry-after' => $date } },
		expect => 'ok', attempts => 2);
	@t = map { $_->{time} } @{ $r->{log} };
	$gap = @t == 2 ? $t[1] - $t[0] : -1;
	ok($gap >= 1.5 && $gap < 4.5, "an HTTP-date retry-after is honoured ($gap s for '$date')");
}

# -- Status codes: persistent (retries spent) and transient (two failures).
my %status_state = (500 => '58000', 502 => '58000', 503 => '58000', 504 => '58000',
	529 => '58000', 408 => '08006', 409 => '55000');
my %create_retries = (503 => 1, 529 => 1);
for my $status (500, 502, 503, 504, 529, 408, 409)
{
	for my $kind (@kind_order)
	{
		my $retried = $kind ne 'create' || $create_retries{$status};
		run_case(name => "$status persistent", kind => $kind,
			fault => { status => $status, times => -1, headers => $fast },
			expect => $status_state{$status}, attempts => $retried ? 3 : 1, created => 0);
		run_case(name => "$status transient", kind => $kind,
			fault => { status => $status, times => 2, headers => $fast },
			expect => $retried ? 'ok' : $status_state{$status}, attempts => $retried ? 3 : 1,
			created => $retried ? 1 : 0);
	}
}

# -- x-should-retry overrides the status, for every kind of call.
for my $kind (@kind_order)
{
	run_case(name => 'x-should-retry: false on 500', kind => $kind,
		fault => { status => 500, times => -1, headers => { %$fast, 'x-should-retry' => 'false' } },
		expect => '58000', attempts => 1, created => 0);
	run_case(name => 'x-should-retry: true on 400', kind => $kind,
		fault => { status => 400, times => 1, headers => { %$fast, 'x-should-retry' => 'true' } },
		expect => 'ok', attempts => 2, created => 1);
	run_case(name => 'x-should-retry: true on 400, persistent', kind => $kind,
		fault => { status => 400, times => -1, headers => { %$fast, 'x-should-retry' => 'true' } },
		expect => '22023', attempts => 3, created => 0);
}

# -- The connection closed before any answer.
# libcurl itself resends a request once when a REUSED keep-alive connection
# dies before any byte of the answer (it takes the connection for a stale
# one), up to 5 times while the cache holds idle connections.  Retries and
# creates open a fresh connection, so only a GET's or an ack's first
# attempt can be resent that way: 3 to 8 requests (harmless: they are
# retried anyway); env_create is never resent.
for my $kind (@kind_order)
{
	my $retried = $kind ne 'create';
	run_case(name => 'closed before answering', kind => $kind,
		fault => { close => JSON::PP::true, times => -1 },
		expect => '08006', attempts => $retried ? [ 3, 8 ] : 1, created => 0,
		like => qr/connection to the Anthropic API was lost\|Attempts: \d+\. Empty reply/);
	run_case(name => 'closed before answering, transient', kind => $kind,
		fault => { close => JSON::PP::true, times => 2 },
		expect => $retried ? 'ok' : '08006', attempts => $retried ? 3 : 1, created => 0);
}

# -- Closed mid-body (the real answer is half sent): the request WAS processed.
run_case(name => 'closed mid-body', kind => 'get',
	fault => { truncate => JSON::PP::true, times => 1 }, expect => 'ok', attempts => 2);
run_case(name => 'closed mid-body, persistent', kind => 'get',
	fault => { truncate => JSON::PP::true, times => -1 }, expect => '08006', attempts => 3,
	like => qr/connection to the Anthropic API was lost/);
run_case(name => 'closed mid-body', kind => 'create',
	fault => { truncate => JSON::PP::true, times => 1 }, expect => '08006', attempts => 1,
	created => 1);
{
	# The ack took effect on the first attempt; the retries then meet a 409
	# (retried like the SDKs do) on an item that is now starting, which is
	# the ack's own success (README, failure table): the item is returned.
	my $r = run_case(name => 'closed mid-body', kind => 'ack',
		fault => { truncate => JSON::PP::true, times => 1 }, expect => 'ok', attempts => 3);
	my $st = try_sql("SELECT state FROM anthropic.work_get('$senv', '$r->{call}{item}')");
	is($st, 'ok|starting', 'closed mid-body on ack: the item was acknowledged once');
}

# -- Malformed 200 answers: never retried, 08006.
my %malformed = (
	'truncated JSON body' => { status => 200, body => '{"id": "env_01234567890123456789abcd", "name": "tru' },
	'invalid JSON' => { status => 200, body => q({'id': 'env_x', name: matrix}) },
	'200 with a non-JSON content type' => { status => 200, content_type => 'text/plain',
		body => '{"id": "env_01234567890123456789abcd", "type": "environment", "name": "x"}' },
	'wrong JSON type (array)' => { status => 200, body => '[{"id": "env_01234567890123456789abcd"}]' },
	'object lacking id' => { status => 200, body => '{"type": "environment", "name": "x", "state": "starting"}' },
);
my %malformed_why = (
	'truncated JSON body' => qr/not valid JSON/,
	'invalid JSON' => qr/not valid JSON/,
	'200 with a non-JSON content type' => qr/content type application\/json/,
	'wrong JSON type (array)' => qr/not a JSON object/,
	'object lacking id' => qr/has no "id"/,
);
for my $name (sort keys %malformed)
{
	for my $kind (@kind_order)
	{
		run_case(name => $name, kind => $kind, fault => { %{ $malformed{$name} }, times => -1 },
			expect => '08006', attempts => 1, created => 0,
			like => qr/malformed answer from the Anthropic API.*$malformed_why{$name}/);
	}
}

# -- An HTML error page with status 502: a 5xx like any other.
for my $kind (@kind_order)
{
	my $retried = $kind ne 'create';
	run_case(name => 'HTML 502 page', kind => $kind,
		fault => { status => 502, times => -1, content_type => 'text/html', headers => $fast,
			body => "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>\n" },
		expect => '58000', attempts => $retried ? 3 : 1, created => 0,
		like => qr/Anthropic API request failed with HTTP status 502/);
}

# -- A body over anthropic.max_response_bytes: 54000, not retried.
for my $kind (@kind_order)
{
	run_case(name => 'body over max_response_bytes', kind => $kind,
		fault => { status => 200, times => -1,
			body => '{"id": "env_01234567890123456789abcd", "name": "' . ('x' x 5000) . '"}' },
		set => q{SET anthropic.max_response_bytes = 1024}, reset => 'RESET anthropic.max_response_bytes',
		expect => '54000', attempts => 1, created => 0, like => qr/max_response_bytes/);
}

# -- Slower than anthropic.timeout_ms: a timeout is a connection error.
for my $kind (@kind_order)
{
	my $retried = $kind ne 'create';
	run_case(name => 'answer slower than timeout_ms', kind => $kind,
		fault => { delay_ms => 700, times => -1 },
		set => 'SET anthropic.timeout_ms = 200', reset => 'RESET anthropic.timeout_ms',
		expect => '08006', attempts => $retried ? 3 : 1, created => '<=1', like => qr/timed out after 200 ms/);
}
run_case(name => 'answer slower than timeout_ms, transient', kind => 'get',
	fault => { delay_ms => 700, times => 1 },
	set => 'SET anthropic.timeout_ms = 200', reset => 'RESET anthropic.timeout_ms',
	expect => 'ok', attempts => 2);
# (status 500 after the delay: the ack is not processed by the timed-out attempts)
run_case(name => 'answer slower than timeout_ms, transient', kind => 'ack',
	fault => { delay_ms => 700, status => 500, times => 1 },
	set => 'SET anthropic.timeout_ms = 200', reset => 'RESET anthropic.timeout_ms',
	expect => 'ok', attempts => 2);

# -- A body that drips slower than the timeout.
for my $kind (@kind_order)
{
	my $retried = $kind ne 'create';
	run_case(name => 'body dripping slower than timeout_ms', kind => $kind,
		fault => { drip_ms => 100, times => -1 },
		set => 'SET anthropic.timeout_ms = 300', reset => 'RESET anthropic.timeout_ms',
		expect => '08006', attempts => $retried ? 3 : 1, created => '<=1', like => qr/timed out/);
}
run_case(name => 'body dripping slower than timeout_ms, transient', kind => 'get',
	fault => { drip_ms => 100, times => 1 },
	set => 'SET anthropic.timeout_ms = 300', reset => 'RESET anthropic.timeout_ms',
	expect => 'ok', attempts => 2);

# -- Connection refused: nothing was sent, so even env_create retries.
for my $kind (@kind_order)
{
	my $r = run_case(name => 'connection refused', kind => $kind,
		set => q{SET anthropic.base_url = 'http://127.0.0.1:1'}, reset => 'RESET anthropic.base_url',
		expect => '08006', attempts => 0, created => 0,
		like => qr/could not connect to the Anthropic API\|Attempts: 3\./);
}

# -- A 500 answered after the fake created the environment: exactly one.
for my $variant ([ 'status 500 after creating', { status => 500, after => JSON::PP::true, headers => $fast }, '58000' ],
	[ 'connection closed after creating', { close => JSON::PP::true, after => JSON::PP::true }, '08006' ])
{
	my ($name, $fault, $state) = @$variant;
	# Once on a fresh connection and once on a reused keep-alive connection.
	for my $reuse (0, 1)
	{
		# A new session has no connection yet; the main one keeps its own.
		local $s = $reuse ? $s : $node->background_psql('postgres', on_error_stop => 0);
		local $pid = $s->query_safe('SELECT pg_backend_pid()');
		chomp $pid;
		run_case(name => $name . ($reuse ? ' (reused connection)' : ' (new connection)'), kind => 'create',
			fault => { %$fault, times => -1 }, expect => $state, attempts => 1, created => 1);
		$s->quit unless $reuse;
	}
}

# -- More than 1,000 faulty calls in one session: RSS stays flat.
{
	$fake->clear_faults;
	$fake->clear_requests;
	my @mix = (
		[ 'm500', { status => 500 } ],
		[ 'm502html', { status => 502, content_type => 'text/html', body => '<html>bad gateway</html>' } ],
		[ 'mclose', { close => JSON::PP::true } ],
		[ 'mtrunc', { truncate => JSON::PP::true } ],
		[ 'mjson', { status => 200, body => '{"id": "env_x", "na' } ],
		[ 'marray', { status => 200, body => '[1, 2, 3]' } ],
		[ 'mnoid', { status => 200, body => '{"name": "no id"}' } ],
		[ 'mctype', { status => 200, content_type => 'text/plain', body => '{"id": "env_x"}' } ],
		[ 'mbig', { status => 200, body => '{"id": "env_x", "name": "' . ('y' x 3000) . '"}' } ],
		[ 'm429', { status => 429 } ],
		[ 'm404', undef ],    # a real 404 from the fake
		[ 'mstr', { status => 200, body => '"just a string"' } ],
	);
	for my $m (@mix)
	{
		next unless $m->[1];
		$fake->fault({ %{ $m->[1] }, method => 'GET', path_regex => "^/v1/environments/env_$m->[0]\$",
			times => -1 });
	}
	my $ids = join(',', map { "'env_$_->[0]'" } @mix);
	my $batch = sub {
		my ($rounds) = @_;
		return $s->query_safe(qq{
SET anthropic.max_retries = 0;
SET anthropic.max_response_bytes = 2048;
DO \$\$
DECLARE
	id text;
	n int := 0;
	states text[] := '{}';
BEGIN
	FOR r IN 1 .. $rounds LOOP
		FOREACH id IN ARRAY ARRAY[$ids] LOOP
			BEGIN
				PERFORM anthropic.env_get(id);
			EXCEPTION WHEN OTHERS THEN
				n := n + 1;
				IF NOT SQLSTATE = ANY (states) THEN states := states || SQLSTATE::text; END IF;
			END;
		END LOOP;
	END LOOP;
	PERFORM set_config('t.failed', n::text, false);
	PERFORM set_config('t.states', array_to_string(states, ','), false);
END \$\$;
RESET anthropic.max_retries;
RESET anthropic.max_response_bytes;
SELECT current_setting('t.failed') || ' ' || current_setting('t.states');});
	};
	my $rss = sub {
		my $st = slurp_file("/proc/$pid/status");
		my ($kb) = $st =~ /^VmRSS:\s+(\d+) kB/m;
		my ($anon) = $st =~ /^RssAnon:\s+(\d+) kB/m;
		return ($kb, $anon // 0);
	};
	my $ctx = sub {
		my $v = $s->query_safe('SELECT sum(total_bytes) FROM pg_backend_memory_contexts');
		chomp $v;
		return $v;
	};
	# Warm-up: caches, the connection, the first error paths.
	my $w = $batch->(5);
	like($w, qr/^60 /, 'warm-up: 60 faulty calls all failed');
	my ($rss0, $anon0) = $rss->();
	my $ctx0 = $ctx->();
	my $t0 = time;
	my $total = 0;
	my $batches = 0;
	my %states;
	my @samples;
	# At least 1,008 calls; up to 10,080 while that takes less than 15 s,
	# so that a leak of a few hundred bytes per call shows too.
	while ($batches < 4 || ($batches < 40 && time - $t0 < 15))
	{
		my $out = $batch->(21);    # 252 calls
		my ($n, $st) = $out =~ /^(\d+) (\S*)/;
		$total += $n // 0;
		$states{$_} = 1 for split /,/, ($st // '');
		push @samples, ($rss->())[0];
		$batches++;
	}
	my ($rss1, $anon1) = $rss->();
	my $ctx1 = $ctx->();
	my $secs = sprintf('%.1f', time - $t0);
	is($total, 252 * $batches, "$total faulty calls in one session all failed cleanly (${secs}s)");
	cmp_ok($total, '>=', 1000, 'more than 1,000 of them');
	my %allowed = map { $_ => 1 } qw(08006 58000 53400 54000 42704);
	ok(!(grep { !$allowed{$_} } keys %states), 'with design.md SQLSTATEs only')
	  or diag join(',', sort keys %states);
	is(join(',', sort keys %states), '08006,42704,53400,54000,58000', 'every kind of failure was seen');
	my $growth = $rss1 - $rss0;
	diag "VmRSS $rss0 kB -> $rss1 kB over $total calls (samples @samples), RssAnon $anon0 -> $anon1 kB, "
	  . "memory contexts $ctx0 -> $ctx1 bytes";
	cmp_ok($growth, '<', 5 * 1024, "backend RSS grew by less than 5 MB ($growth kB)");
	cmp_ok($ctx1 - $ctx0, '<', 512 * 1024, 'memory contexts did not grow');
	my $served = grep { $_->{path} =~ m{^/v1/environments/env_m} } @{ $fake->requests };
	cmp_ok($served, '>=', $total + 60, 'the fake saw every attempt');
	check_alive("after $total faulty calls");
}

$s->quit;
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal|server process .* was terminated/, 'no backend crashed');
$node->stop;

done_testing();
