# Issue 13: a call written once runs once ((f(x)).*), a repeated call that
# took effect reports success, and anthropic.max_retry_wait.
use strict;
use warnings;

use FakeApi;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $fake = FakeApi->start;
END { local $?; $fake->stop if $fake; }
my $node = $fake->new_node('once');
$node->safe_psql('postgres', $FakeApi::T_TRY);
sub q1 { my $r = $node->safe_psql('postgres', $_[0]); return $r; }
sub count_req { my ($m, $re) = @_; return scalar grep { $_->{method} eq $m && $_->{path} =~ $re } @{ $fake->requests }; }

# (f(x)).* : one create, one ack.
$fake->clear_requests;
my $cols = q1(q{SELECT count(*) FROM (SELECT (anthropic.env_create('{"name": "once", "config": {"type": "self_hosted"}}')).*) s});
is($cols, 1, '(env_create(...)).* yields one row');
is(count_req('POST', qr{^/v1/environments$}), 1, '(env_create(...)).* sent one create');
my $env = q1(q{SELECT id FROM anthropic.env_list() WHERE name = 'once'});
like($env, qr/^env_\w+$/, 'exactly one environment named once');

$fake->clear_requests;
q1(q{SELECT count(*) FROM (SELECT (anthropic.env_create(format('{"name": "row-%s"}', i)::jsonb)).* FROM generate_series(1, 3) i) s});
is(count_req('POST', qr{^/v1/environments$}), 3, 'a call run once per row sends one request per row');
$fake->clear_requests;
q1(q{SELECT anthropic.env_create('{"name": "twice"}'), anthropic.env_create('{"name": "twice"}')});
is(count_req('POST', qr{^/v1/environments$}), 2, 'a call written twice runs twice');

my $item = $fake->call('POST', "/_fake/environments/$env/work", {})->{id};
$fake->clear_requests;
my $acked = q1(qq{SELECT state FROM (SELECT (anthropic.work_ack('$env', '$item')).*) s});
is($acked, 'starting', '(work_ack(...)).* acks and returns the item');
is(count_req('POST', qr{/ack$}), 1, '(work_ack(...)).* sent one ack');

# A heartbeat whose answer was lost: the 412 that shows its lease is success.
my $hb1 = q1(qq{SELECT last_heartbeat FROM anthropic.work_heartbeat('$env', '$item', 'NO_HEARTBEAT')});
$fake->fault({ method => 'POST', path_regex => "/work/$item/heartbeat\$", close => JSON::PP::true,
	after => JSON::PP::true, times => 1 });
my $r = q1(qq{SELECT t_try('SELECT state || '','' || lease_extended || '','' || (last_heartbeat <> ''$hb1'') || '','' || last_heartbeat FROM anthropic.work_heartbeat(''$env'', ''$item'', ''$hb1'')')});
like($r, qr/^ok\|active,true,true,/, 'a lost beat that took effect is reported as that beat') or diag $r;
my ($hb2) = $r =~ /,([^,]+)$/;
is(q1(qq{SELECT t_try('SELECT lease_extended FROM anthropic.work_heartbeat(''$env'', ''$item'', ''$hb2'')')}),
	'ok|true', 'the next beat, echoing the reconciled last_heartbeat, succeeds');
# Without a lost attempt, a 412 stays 40001.
like(q1(qq{SELECT t_try('SELECT 1 FROM anthropic.work_heartbeat(''$env'', ''$item'', ''$hb1'')')}),
	qr/^err\|40001\|/, 'a stale expected_last_heartbeat without a lost attempt fails with 40001');

# Stop with force whose answer was lost: the 409 on a stopped item is success.
$fake->fault({ method => 'POST', path_regex => "/work/$item/stop\$", close => JSON::PP::true,
	after => JSON::PP::true, times => 1 });
is(q1(qq{SELECT t_try('SELECT state FROM anthropic.work_stop(''$env'', ''$item'', true)')}),
	'ok|stopped', 'a lost stop that took effect returns the stopped item');
like(q1(qq{SELECT t_try('SELECT state FROM anthropic.work_stop(''$env'', ''$item'', true)')}),
	qr/^err\|55000\|/, 'a stop on a stopped item without a lost attempt fails with 55000');

# Archive and delete whose answers were lost.  The archive's answer is the
# re-fetched environment, whose raw keeps numbers as the server wrote them.
my $e2 = q1(q{SELECT id FROM anthropic.env_create('{"name": "gone"}')});
$fake->fault({ method => 'POST', path_regex => "/$e2/archive\$", close => JSON::PP::true,
	after => JSON::PP::true, times => 1 });
$fake->fault({ method => 'GET', path_regex => "/v1/environments/$e2\$", status => 200, times => 1,
	body => qq({"type":"environment","id":"$e2","name":"gone","description":null,)
	  . '"config":{"type":"cloud","n":123456789012345678901234567890,"r":0.1},"metadata":{},'
	  . '"scope":"organization","created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z",'
	  . '"archived_at":"2026-01-02T00:00:00Z"}' });
is(q1(qq{SELECT t_try('SELECT (raw->''config''->>''n'') || '' '' || (raw->''config''->>''r'') || '' '' || (config->>''n'') FROM anthropic.env_archive(''$e2'')')}),
	'ok|123456789012345678901234567890 0.1 123456789012345678901234567890',
	'a reconciled archive keeps integers beyond int64 in raw and config');
$e2 = q1(q{SELECT id FROM anthropic.env_create('{"name": "gone"}')});
$fake->fault({ method => 'POST', path_regex => "/$e2/archive\$", close => JSON::PP::true,
	after => JSON::PP::true, times => 1 });
is(q1(qq{SELECT t_try('SELECT archived_at IS NOT NULL FROM anthropic.env_archive(''$e2'')')}),
	'ok|true', 'a lost archive that took effect returns the environment');
$fake->fault({ method => 'DELETE', path_regex => "/$e2\$", close => JSON::PP::true,
	after => JSON::PP::true, times => 1 });
is(q1(qq{SELECT t_try('SELECT anthropic.env_delete(''$e2'')')}), 'ok|true',
	'a lost delete that took effect returns true');
like(q1(qq{SELECT t_try('SELECT anthropic.env_delete(''$e2'')')}), qr/^err\|42704\|/,
	'deleting a missing environment without a lost attempt fails with 42704');

# anthropic.max_retry_wait: a longer retry-after fails at once.
$fake->clear_requests;
$fake->fault({ method => 'GET', path_regex => "^/v1/environments/$env\$", status => 429,
	headers => { 'retry-after' => '2' }, times => 1 });
my $t0 = time;
$r = q1(qq{SET anthropic.max_retry_wait = '500ms'; SELECT t_try('SELECT id FROM anthropic.env_get(''$env'')')});
my $el = time - $t0;
like($r, qr/^err\|53400\|.*retry after 2000 ms, longer than anthropic\.max_retry_wait/,
	'a retry-after beyond max_retry_wait fails with the status SQLSTATE and names the delay') or diag $r;
ok($el < 1.5, "it fails at once ($el s)");
is(count_req('GET', qr{^/v1/environments/$env$}), 1, 'one request only');
is(q1('SHOW anthropic.max_retry_wait'), '1min', 'max_retry_wait defaults to 60 s');

# raw keeps numbers as written.
$fake->fault({ method => 'GET', path_regex => "^/v1/environments/env_num\$", status => 200, times => 1,
	body => '{"type":"environment","id":"env_num","name":"n","description":null,"config":{"type":"self_hosted"},'
	  . '"metadata":{"a":0.1,"b":1e300,"c":123456789012345678901234567890},"scope":"organization",'
	  . '"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z","archived_at":null}' });
is(q1(q{SELECT t_try($$SELECT (raw->'metadata')::text FROM anthropic.env_get('env_num')$$)}),
	'ok|{"a": 0.1, "b": 1' . ('0' x 300) . ', "c": 123456789012345678901234567890}',
	'raw keeps 0.1, 1e300 and an integer beyond int64 as numbers of their own value');

done_testing();
