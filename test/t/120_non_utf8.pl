# Answers in databases whose encoding is not UTF8 (found by a review): the
# jansson view of an answer's jsonb converts each string from the server
# encoding, and a jsonb string has no terminating NUL.  SQL_ASCII hands the
# input back unchanged, and so does any encoding for an empty string: the
# conversion must work on a terminated copy, or it reads past the string
# (in SQL_ASCII every answer came out garbled).  Asserted:
#   - SQL_ASCII: an all-ASCII answer gives its row;
#   - LATIN1: an answer with "description":"" gives an empty description.
#   - SQL_ASCII: non-ASCII text, written raw or as \u escapes (surrogate
#     pairs too), is stored as the UTF-8 bytes the server sent, in the
#     typed columns and in raw; a name sent from SQL_ASCII reaches the
#     server as the same UTF-8.
use strict;
use warnings;

use FakeApi;
use JSON::PP;
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

# SQL_ASCII stores what the server sent: UTF-8 bytes, whether written raw
# or as \u escapes (jsonb_in alone refuses an escape above 007F there).
$fake->fault({ method => 'GET', path_regex => '^/v1/environments/env_u8$', status => 200, times => -1,
	body => env_text('env_u8', "caf\x{e9} \x{1F600}") });
$fake->fault({ method => 'GET', path_regex => '^/v1/environments/env_esc$', status => 200, times => -1,
	body => env_text('env_esc', 'caf\\u00e9 \\ud83d\\ude00 \\u0041\\n\\\\u00e9') });
for my $id ('env_u8', 'env_esc')
{
	is($node->safe_psql('sa', qq{SELECT t_try(\$\$SELECT encode(convert_to(name, 'SQL_ASCII'), 'hex') || ' ' || encode(convert_to(raw->>'name', 'SQL_ASCII'), 'hex') FROM anthropic.env_get('$id')\$\$)}),
		$id eq 'env_u8' ? 'ok|636166c3a920f09f9880 636166c3a920f09f9880'
		  : 'ok|636166c3a920f09f988020410a5c7530306539 636166c3a920f09f988020410a5c7530306539',
		"SQL_ASCII: $id keeps the UTF-8 bytes in name and raw");
}
$fake->clear_requests;
is($node->safe_psql('sa', q{SELECT t_try($$SELECT encode(name::bytea, 'hex') FROM anthropic.env_create(jsonb_build_object('name', E'caf\\xc3\\xa9', 'config', '{"type": "cloud"}'::jsonb))$$)}),
	'ok|636166c3a9', 'SQL_ASCII: a created name comes back as the same bytes');
my ($create) = grep { $_->{method} eq 'POST' && $_->{path} eq '/v1/environments' } @{ $fake->requests };
is($create && JSON::PP->new->decode($create->{body})->{name}, "caf\x{e9}", 'SQL_ASCII: the request carried the name as UTF-8');

$node->stop;
done_testing();
