# The reason a malformed answer gives (found by review of the interruptible
# parser, issue 13): valid JSON that PostgreSQL cannot store (\u0000; in
# LATIN1 an escape of a character LATIN1 lacks) is 08006 with a detail that
# says the answer cannot be stored as jsonb and gives jsonb_in's own reason
# for the same text in the same database; a syntax error still says "not
# valid JSON: invalid input syntax" and quotes none of the answer's text.
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $fake = FakeApi->start;
my $node = $fake->new_node('review932');
$node->safe_psql('postgres', $FakeApi::T_TRY);
$node->safe_psql('postgres',
	q{CREATE DATABASE l1 TEMPLATE template0 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'});
$node->safe_psql('l1', 'CREATE EXTENSION anthropic_env');
$node->safe_psql('l1', $FakeApi::T_TRY);

my $i = 0;
sub answer
{
	my ($db, $x) = @_;
	my $id = 'env_m' . (++$i);
	$fake->fault({ method => 'GET', path_regex => "^/v1/environments/$id\$", status => 200, times => -1,
		body => '{"type":"environment","id":"' . $id . '","name":"n","config":{"type":"self_hosted"},'
		  . '"metadata":{},"x":' . $x . '}' });
	return $node->safe_psql($db, "SELECT t_try(\$\$SELECT id FROM anthropic.env_get('$id')\$\$)");
}

is($node->safe_psql('postgres', q{SELECT t_try($$SELECT '"\u0000"'::jsonb::text$$)}) =~ /unsupported Unicode escape sequence/ ? 1 : 0,
	1, 'jsonb_in calls \u0000 an unsupported Unicode escape sequence');
for my $c ([ 'postgres', '"a\u0000b"', 'UTF8: \u0000 in a string' ],
	[ 'postgres', '{"\u0000":1}', 'UTF8: \u0000 in a key' ],
	[ 'l1', '"\u20ac"', 'LATIN1: an escape of a character LATIN1 lacks' ])
{
	my ($db, $x, $label) = @$c;
	my $r = answer($db, $x);
	like($r, qr/^err\|08006\|malformed answer/, "$label: malformed (08006)");
	# jsonb_in's words for the same text in the same database (they differ
	# by major: 15 reports LATIN1's missing character from the conversion).
	my (undef, undef, $jin) = split /\|/, $node->safe_psql($db, "SELECT t_try(\$\$SELECT '$x'::jsonb\$\$)");
	like($r, qr/cannot be stored as jsonb: \Q$jin\E/, "$label: the detail gives jsonb_in's reason ($jin)")
	  or diag $r;
}
# Kept: a syntax error still reads as one.
like(answer('postgres', '[1,2'), qr/^err\|08006\|.*not valid JSON: invalid input syntax for type json/,
	'a syntax error reads as invalid input syntax');

# The parser's detail quotes the bad token; a secret written unquoted must
# not reach the error.
my $bare = answer('postgres', '{"secret": wsec_bare_token_9f3k2}');
like($bare, qr/^err\|08006\|.*not valid JSON/, 'an unquoted token is a syntax error');
unlike($bare, qr/wsec_bare_token_9f3k2/, 'the error does not quote the answer\'s text');
$node->stop;
done_testing();
