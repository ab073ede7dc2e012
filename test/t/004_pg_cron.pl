# pg_cron (Debian's postgresql-NN-cron), preloaded next to anthropic_env,
# runs SELECT anthropic.sync() on schedule instead of the worker.
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

# Debian does not package pg_cron for every major (none for 19 yet).
my $pkglibdir = `pg_config --pkglibdir`;
chomp $pkglibdir;
plan skip_all => "pg_cron is not installed for this PostgreSQL major ($pkglibdir)"
  unless -f "$pkglibdir/pg_cron.so";

my $fake = FakeApi->start;
$fake->bulk(30);
my $node = $fake->new_node('cron',
	preload => 'anthropic_env,pg_cron',
	conf => "cron.database_name = 'postgres'\ncron.use_background_workers = on\nmax_worker_processes = 16\n");
$node->safe_psql('postgres', 'CREATE EXTENSION pg_cron');

# The README's schedule, every minute.
my $job = $node->safe_psql('postgres', q{SELECT cron.schedule('anthropic-sync', '* * * * *', 'SELECT anthropic.sync()')});
like($job, qr/^\d+$/, 'the job is scheduled');

# Minute granularity: wait for the first run, at most about two minutes.
my $status = '';
my $deadline = time + 130;
while (time < $deadline)
{
	$status = $node->safe_psql('postgres',
		"SELECT status FROM cron.job_run_details WHERE jobid = $job AND status IN ('succeeded', 'failed') ORDER BY runid LIMIT 1");
	last if $status ne '';
	usleep(500_000);
}
is($status, 'succeeded', 'cron.job_run_details shows the sync succeeded');
is($node->safe_psql('postgres', 'SELECT count(*) FROM anthropic.environments'), '30', 'the mirror was filled by the cron job');
is($node->safe_psql('postgres', q{SELECT status FROM anthropic.sync_runs ORDER BY run_id DESC LIMIT 1}), 'ok',
	'the run is in sync_runs');

$node->safe_psql('postgres', "SELECT cron.unschedule($job)");
$node->stop;
unlike(slurp_file($node->logfile), qr/\Q$FakeApi::KEY\E/, 'the server log does not contain the key');
done_testing();
