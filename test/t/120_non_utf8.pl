# Answers in databases whose encoding is not UTF8 (found by a review): the
# jansson view of an answer's jsonb converts each string from the server
# encoding, and a jsonb string has no terminating NUL.  SQL_ASCII hands the
# input back unchanged, and so does any encoding for an empty string: the
# conversion must work on a terminated copy, or it reads past the string
# (in SQL_ASCII every answer came out garbled).  Asserted:
#   - SQL_ASCII: an all-ASCII answer gives its row;
#   - LATIN1: an answer with "description":"" gives an empty description.
# Non-ASCII text in a SQL_ASCII database is not handled (README, Decisions).
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $fake = FakeApi->start;
my $node = $fake->new_node('review_sql_ascii');
$node->safe_psql('postgres',
	q{CREATE DATABASE sa TEMPLATE template0 ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'});
$node->safe_psql('sa', 'CREATE EXTENSION anthropic_env');
$node->safe_psql('sa', $FakeApi::T_TRY);
$node->safe_psql('postgres',
	q{CREATE DATABASE l1 TEMPLATE template0 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'});
$node->safe_psql('l1', 'CREATE EXTENSION anthropic_env');
$node->safe_psql('l1', $FakeApi::T_TRY);

sub env_text
{
	my ($id, $name, $description) = @_;
	return '{"type":"environment","id":"' . $id . '","name":"' . $name . '","description":'
	  . ($description // 'null') . ','
	  . '"config":{"type":"self_hosted"},"metadata":{},"scope":"organization",'
	  . '"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z","archived_at":null}';
}

$fake->fault({ method => 'GET', path_regex => '^/v1/environments/env_ascii$', status => 200, times => -1,
	body => env_text('env_ascii', 'n') });
$fake->fault({ method => 'GET', path_regex => '^/v1/environments/env_empty$', status => 200, times => -1,
	body => env_text('env_empty', 'n', '""') });

is($node->safe_psql('sa', q{SELECT t_try($$SELECT name FROM anthropic.env_get('env_ascii')$$)}),
	'ok|n', 'SQL_ASCII: an all-ASCII answer gives its row');
is($node->safe_psql('l1', q{SELECT t_try($$SELECT '[' || description || ']' FROM anthropic.env_get('env_empty')$$)}),
	'ok|[]', 'LATIN1: an empty description stays empty');

$node->stop;
done_testing();
