# Keys never reach the server log, even where PostgreSQL itself would
# print them: a reload that changes a key, log_statement, set_config().
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $fake = FakeApi->start;
my $node = $fake->new_node('redact', conf => "log_min_messages = debug5\nlog_statement = all\n");
my @secrets = ('sk-ant-alter-system-0123456789', 'sk-ant-session-set-0123456789',
	'sk-ant-set-config-0123456789');

# A key changed with ALTER SYSTEM and a reload: the postmaster logs the change.
$node->safe_psql('postgres', "ALTER SYSTEM SET anthropic.environment_key = '$secrets[0]'");
$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
usleep(500_000);
# log_statement and set_config() in a session.
$node->psql('postgres', "SET anthropic.api_key = '$secrets[1]'; SELECT 1");
$node->psql('postgres', "SELECT set_config('anthropic.api_key', '$secrets[2]', false)");
# The key in force, typed into a statement.
$node->psql('postgres', "SELECT '$FakeApi::KEY' AS typed");
# And the environment key in force, in an error.
$node->psql('postgres', "SELECT length(current_setting('anthropic.environment_key')), '$secrets[0]'::int");

$node->stop;
my $log = slurp_file($node->logfile);
like($log, qr/parameter "anthropic.environment_key" changed to "\*{8}"/, 'the reload message shows a mask');
like($log, qr/statement: SET anthropic\.api_key = '\*{8}';\n.*statement: SELECT set_config\('anthropic\.api_key', '\*{8}', false\)/s,
	'a logged statement that sets a key shows its literals masked');
for my $s (@secrets, $FakeApi::KEY)
{
	unlike($log, qr/\Q$s\E/, "the log never holds the value $s");
}
# The server's environment works as a key source too; PostgreSQL dumps its
# environment only at log_min_messages >= debug3, so at the default level
# the key stays out of the log.
my $envnode = $fake->new_node('envkey', key_via => 'env');
like($envnode->safe_psql('postgres', q{SELECT id FROM anthropic.env_create('{"name": "from-env"}')}),
	qr/^env_/, 'ANTHROPIC_API_KEY in the server environment is used');
$envnode->stop;
unlike(slurp_file($envnode->logfile), qr/\Q$FakeApi::KEY\E/, 'and it is not logged at the default level');
done_testing();
