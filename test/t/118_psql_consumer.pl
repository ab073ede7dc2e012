# The README's consumer outside the database, the psql loop, run exactly as
# printed there (extracted from README.md, so the text cannot drift): it
# claims an item, hands its id and secret to ./run-session, and finishes it.
use strict;
use warnings;

use File::Temp qw(tempdir);
use FakeApi;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $readme = slurp_file("$ENV{TESTDIR}/../../README.md");
my ($block) = $readme =~ /<!-- psql-consumer:begin -->\s*```sh\n(.*?)```\s*<!-- psql-consumer:end -->/s;
ok(defined $block, 'the README holds the psql consumer');
my ($env) = $block =~ /work_claim\('(env_\w+)'/;
ok(defined $env, "it names an environment ($env)");

my $fake = FakeApi->start;
END { local $?; $fake->stop if $fake; }
$fake->call('POST', '/_fake/lease', { ttl_seconds => 4 });
my $node = $fake->new_node('consumer',
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '1h'\n");

# The environment of the README's text, under its very id.
my $raw = decode_json($node->safe_psql('postgres',
	q{SELECT raw FROM anthropic.env_create('{"name": "psql-consumer", "config": {"type": "self_hosted"}}')}));
$raw->{id} = $env;
$raw->{name} = 'readme';
$fake->call('POST', '/_fake/environments/raw', $raw);
$node->safe_psql('postgres', "SELECT anthropic.serve('$env')");
my $w = $fake->call('POST', "/_fake/environments/$env/work", {})->{id};

my $dir = tempdir(CLEANUP => 1);
open(my $fh, '>', "$dir/run-session") or die;
print $fh "#!/bin/sh\necho \"\$1 \$WORK_SECRET\" >> done.txt\n[ ! -e fail ]\n";
close $fh;
chmod 0755, "$dir/run-session";

local $ENV{PGHOST} = $node->host;
local $ENV{PGPORT} = $node->port;
local $ENV{PGDATABASE} = 'postgres';
my ($out, $err) = ('', '');
my $h = IPC::Run::start([ 'bash', '-c', "cd '$dir' && $block" ], '>', \$out, '2>', \$err);
my $state = '';
for (1 .. 200)
{
	$state = $node->safe_psql('postgres', "SELECT state || (stop_sent_at IS NOT NULL) FROM anthropic.leases WHERE work_id = '$w'");
	last if $state eq 'finishedtrue';
	select(undef, undef, undef, 0.1);
}
is($state, 'finishedtrue', 'the loop claimed the item and finished it; the keeper sent the stop');
my $done = -e "$dir/done.txt" ? slurp_file("$dir/done.txt") : '';
like($done, qr/^\Q$w\E \S{8,}$/m, 'run-session got the work id and the secret');
is((() = $done =~ /\n/g), 1, 'once');

# A run-session that fails: the item is not finished, it goes back and the
# loop takes it again.
open($fh, '>', "$dir/fail") or die;
close $fh;
my $w2 = $fake->call('POST', "/_fake/environments/$env/work", {})->{id};
my $tries = 0;
for (1 .. 200)
{
	$done = slurp_file("$dir/done.txt");
	$tries = () = $done =~ /^\Q$w2\E /mg;
	last if $tries >= 2;
	select(undef, undef, undef, 0.1);
}
ok($tries >= 2, "a failed run is handed back and tried again ($tries runs)");
isnt($node->safe_psql('postgres', "SELECT state FROM anthropic.leases WHERE work_id = '$w2'"), 'finished', 'and never finished');
$h->kill_kill;
is($node->safe_psql('postgres', "SELECT state FROM anthropic.work_get('$env', '$w')"), 'stopped', 'the item is stopped remotely');

$node->stop;
done_testing();
