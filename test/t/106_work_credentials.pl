# Per-environment keys (anthropic.environment_keys_file) and sync_work with
# each environment's own key:
#   - the file is refused, with a WARNING, while others may read it or it
#     is missing; then the work calls send the API key as before;
#   - once it is 0600, each environment's work calls send its own key, an
#     environment without a line falls back; an edit takes effect without
#     a reload;
#   - the keys from the file are masked by value in the log, even in a
#     session that never made a work call; non-superusers cannot read the
#     setting;
#   - sync() with sync_work: an environment whose list is refused (401, 403)
#     keeps its mirrored items, is named in environment_errors, and the
#     rest of the sync commits; a 500 still fails the whole run.
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $KA = 'key-of-env-a-7c1e93b0d2f4';
my $KB = 'key-of-env-b-19ad5e0c77b3';
my $KB_WRONG = 'key-of-env-b-but-outdated-00';

my $fake = FakeApi->start;
my $node = $fake->new_node('credentials',
	conf => "log_min_messages = debug1\nlog_statement = all\nanthropic.sync_work = on\n");
$node->safe_psql('postgres', $FakeApi::T_TRY);
$node->safe_psql('postgres', 'CREATE ROLE plain LOGIN');

my %env;
for my $n (qw(a b c))
{
	$env{$n} = $node->safe_psql('postgres',
		qq{SELECT id FROM anthropic.env_create('{"name": "$n", "config": {"type": "self_hosted"}}')});
}
$fake->call('POST', "/_fake/environments/$env{a}/key", { key => $KA });
$fake->call('POST', "/_fake/environments/$env{b}/key", { key => $KB });

sub try_sql { return $node->safe_psql('postgres', "SELECT t_try(\$q\$$_[0]\$q\$)"); }
sub list_of { return try_sql("SELECT count(*) FROM anthropic.work_list('$_[0]')"); }

like(list_of($env{a}), qr/^err\|28000\|/, 'without a keys file, the API key is refused by an environment with its own key');

my $file = $node->basedir . '/work_credentials';
sub write_keys
{
	my ($mode, @lines) = @_;
	open(my $fh, '>', $file) or die $!;
	print $fh "# environment_id key\n", map { "$_\n" } @lines;
	close $fh;
	chmod $mode, $file;
	# a new mtime even within the same clock tick
	utime(undef, time + int(rand(1000)), $file);
}

write_keys(0644, "$env{a} $KA", "  $env{b}\t$KB   # trailing comment");
$node->append_conf('postgresql.conf', "anthropic.environment_keys_file = '$file'\n");
$node->reload;
my $logpos = -s $node->logfile;
like(list_of($env{a}), qr/^err\|28000\|/, 'a file readable by others is not used');
my $log = substr(slurp_file($node->logfile), $logpos);
like($log, qr/WARNING:  the file named by anthropic\.environment_keys_file is not used\n.*DETAIL:  File "\Q$file\E": Its permissions allow access by group or others/,
	'a WARNING says why the file is refused');

chmod 0600, $file;
utime(undef, time + 2000, $file);
$fake->clear_requests;
is(list_of($env{a}), 'ok|0', 'at 0600, environment a is listed with its own key');
is(list_of($env{b}), 'ok|0', 'and environment b with its own');
is(list_of($env{c}), 'ok|0', 'an environment without a line falls back to the API key');
my @reqs = @{ $fake->requests };
is($reqs[0]{headers}{authorization}, "Bearer $KA", 'a got its key as a Bearer token');
is($reqs[1]{headers}{authorization}, "Bearer $KB", 'b got its key');
ok(!defined $reqs[2]{headers}{authorization} && $reqs[2]{headers}{'x-api-key'} eq $FakeApi::KEY,
	'c got the API key');

# Stats and get take the API key, whatever the file says.
$fake->clear_requests;
is(try_sql("SELECT depth FROM anthropic.work_stats('$env{a}')"), 'ok|0', 'work_stats uses the API key');
is($fake->requests->[0]{headers}{'x-api-key'}, $FakeApi::KEY, 'with x-api-key');

# Lines that do not parse are reported by number, never by value.
write_keys(0600, "$env{a} $KA", "$env{b}", "$env{c} two words-here extra");
$logpos = -s $node->logfile;
is(list_of($env{a}), 'ok|0', 'a good line still works next to bad ones');
$log = substr(slurp_file($node->logfile), $logpos);
like($log, qr/some lines of the file named by anthropic\.environment_keys_file are ignored\n.*DETAIL:  File "\Q$file\E": Line 3 has no key\. Line 4 is not "environment_id key"\./,
	'bad lines are reported by number');
like(list_of($env{b}), qr/^err\|28000\|/, 'b lost its key with its line');

# A missing file is refused too.
rename $file, "$file.gone";
$logpos = -s $node->logfile;
like(list_of($env{a}), qr/^err\|28000\|/, 'a missing file gives no keys');
like(substr(slurp_file($node->logfile), $logpos), qr/is not used\n.*DETAIL:  File "[^"]*": The file does not exist/, 'and is warned about');
rename "$file.gone", $file;
write_keys(0600, "$env{a} $KA", "$env{b} $KB");

# Masked by value, also in a session that made no work call.
$logpos = -s $node->logfile;
$node->psql('postgres', "SELECT '$KA'::integer");
$node->psql('postgres', "SELECT length('$KB')");
$log = substr(slurp_file($node->logfile), $logpos);
like($log, qr/invalid input syntax for type integer/, 'the failing statement was logged');
unlike($log, qr/\Q$KA\E|\Q$KB\E/, 'no key from the file reaches the log');

my ($rc, $out, $err) = $node->psql('postgres', 'SHOW anthropic.environment_keys_file',
	extra_params => [ '-U', 'plain' ]);
like($err, qr/permission denied|must be superuser|privileges of pg_read_all_settings/,
	'a plain role cannot read the setting');

# sync_work: every environment with its own key.
my %item;
$item{$_} = $fake->call('POST', "/_fake/environments/$env{$_}/work", {})->{id} for qw(a b c);
is($node->safe_psql('postgres', 'SELECT status || work_items_seen || coalesce(environment_errors::text, \'-\') FROM anthropic.sync()'),
	'ok3-', 'sync_work lists each environment with its own key');

# b's key is outdated: b keeps its mirrored item, a and c are synced.
write_keys(0600, "$env{a} $KA", "$env{b} $KB_WRONG");
$fake->call('POST', "/_fake/environments/$env{$_}/work", {}) for qw(a b);
my $run = $node->safe_psql('postgres',
	q{SELECT status, work_items_seen, environment_errors FROM anthropic.sync()});
like($run, qr/^ok\|3\|\{"\Q$env{b}\E": "28000: /, 'a 401 for b is recorded for b, and the run commits');
unlike($run, qr/\Q$KB_WRONG\E/, 'the error does not show the key');
is($node->safe_psql('postgres', qq{SELECT environment_id = '$env{b}', count(*) FROM anthropic.work_items
	WHERE deleted_at IS NULL GROUP BY 1 ORDER BY 1}), "f|3\nt|1", 'a and c are synced, b keeps its one item');

# A 403 is recorded the same way; a 500 still fails the whole run.
write_keys(0600, "$env{a} $KA", "$env{b} $KB");
$fake->fault({ path_regex => "/environments/$env{a}/work\$", status => 403 });
$run = $node->safe_psql('postgres', q{SELECT status, environment_errors ? (SELECT id FROM anthropic.environments WHERE name = 'a'), work_items_seen FROM anthropic.sync()});
is($run, 'ok|t|3', 'a 403 for a is recorded; b and c are synced');
$fake->fault({ path_regex => "/environments/$env{c}/work\$", status => 500, times => 3 });
$run = $node->safe_psql('postgres', q{SELECT status FROM anthropic.sync(raise_on_error => false)});
is($run, 'error', 'a 500 still fails the whole run');

unlike(slurp_file($node->logfile), qr/\Q$KA\E|\Q$KB\E|\Q$KB_WRONG\E/, 'no key from the file is ever in the log');

$node->stop;
done_testing();
