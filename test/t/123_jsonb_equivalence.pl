# Answer conversion against jsonb_in (issue 13, rule 4; from review): an
# answer's raw must be exactly jsonb_in's value of the text (its stored
# bytes included: src/jsonbuild.c writes jsonb's format itself), and an answer
# jsonb_in refuses must be reported as malformed (08006).  Each case is put into an environment answer (as the
# member "x", or as the whole text) and compared with text::jsonb of the
# same text in the same database: the value and its text (numbers as
# written), or both failing.  Run in UTF8, SQL_ASCII (ASCII-only cases) and
# LATIN1 databases; plus a seeded random set of objects with many
# duplicate keys, empty keys and escapes.
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $fake = FakeApi->start;
my $node = $fake->new_node('review930');
$node->safe_psql('postgres', $FakeApi::T_TRY);
$node->safe_psql('postgres',
	q{CREATE DATABASE sa TEMPLATE template0 ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'});
$node->safe_psql('postgres',
	q{CREATE DATABASE l1 TEMPLATE template0 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'});
for my $db ('postgres', 'sa', 'l1')
{
	$node->safe_psql($db, 'CREATE EXTENSION IF NOT EXISTS anthropic_env');
	$node->safe_psql($db, $FakeApi::T_TRY) unless $db eq 'postgres';
	$node->safe_psql($db, 'CREATE TABLE t_body (id text PRIMARY KEY, t text)');
	# jsonb's bytes, to compare the stored format and not only the value.
	$node->safe_psql($db, 'CREATE CAST (jsonb AS bytea) WITHOUT FUNCTION');
}

sub env_text
{
	my ($id, $x) = @_;
	return '{"type":"environment","id":"' . $id . '","name":"n","description":null,'
	  . '"config":{"type":"self_hosted"},"metadata":{},"scope":"organization",'
	  . '"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z","archived_at":null,'
	  . '"x":' . $x . '}';
}

my $seq = 0;
my %seen = (equal => 0, refused => 0);

# Compares env_get's raw with text::jsonb for the body in database $db.
sub check
{
	my ($db, $label, $body, %o) = @_;
	my $id = 'env_c' . (++$seq);
	$body = env_text($id, $body) unless $o{whole};
	$fake->fault({ method => 'GET', path_regex => "^/v1/environments/$id\$", status => 200, times => -1,
		body => $body });
	my $b = $body;
	utf8::encode($b);
	$node->safe_psql($db, "SET client_encoding = 'UTF8'; INSERT INTO t_body VALUES ('$id', \$body930\$$b\$body930\$)");
	my $out = $node->safe_psql($db, qq{SET client_encoding = 'UTF8';
SELECT t_try(\$\$SELECT t::jsonb::text FROM t_body WHERE id = '$id'\$\$)
 || E'\\n' || t_try(\$\$SELECT raw::text FROM anthropic.env_get('$id')\$\$)
 || E'\\n' || t_try(\$\$SELECT (e.raw = b.t::jsonb)::text || '/' || (e.raw::bytea = b.t::jsonb::bytea)::text FROM anthropic.env_get('$id') e, t_body b WHERE b.id = '$id'\$\$)});
	my ($jin, $ext, $eq) = split /\n/, $out, 3;
	if ($jin =~ /^ok\|/)
	{
		$seen{equal}++;
		my $ok = $ext eq $jin && $eq eq 'ok|true/true';
		ok($ok, "$db: $label: raw equals jsonb_in's value, byte for byte") or diag("jsonb_in: $jin\nraw:      $ext\nequal:    $eq");
	}
	else
	{
		$seen{refused}++;
		like($ext, qr/^err\|08006\|malformed answer/, "$db: $label: refused as jsonb_in refuses it ($jin)")
		  or diag("jsonb_in: $jin\nraw:      $ext");
	}
}

my @cases = (
	[ 'duplicate keys', '{"a":1,"a":2}' ],
	[ 'duplicate keys apart', '{"a":1,"b":2,"a":3}' ],
	[ 'three duplicates', '{"a":1,"a":2,"a":3}' ],
	[ 'duplicates interleaved', '{"b":1,"a":2,"b":3,"a":4,"c":5,"b":6}' ],
	[ 'empty keys', '{"":1,"":2}' ],
	[ 'empty key between', '{"":1,"a":2,"":3,"a":4}' ],
	[ 'keys of other lengths', '{"ccc":1,"a":2,"bb":3,"a":5,"":6,"bb":7}' ],
	[ 'nested duplicates', '{"a":{"x":1,"x":2},"a":{"y":1,"y":[1,{"z":1,"z":2}]}}' ],
	[ 'duplicates in arrays', '[{"a":1,"a":2},{"a":3},{"b":{"c":1,"c":{}}}]' ],
	[ 'escaped key equals plain key', '{"\u0061":1,"a":2}' ],
	[ 'escaped non-ASCII key equals raw key', qq({"\\u00e9":1,"\x{e9}":2}) ],
	[ 'surrogate pair key equals raw key', qq({"\\ud83d\\ude00":1,"\x{1F600}":2}) ],
	[ 'unsigned byte order of keys', qq({"z\x{e9}":1,"zz":2,"\x{e9}z":3,"\x{7f}\x{7f}":4}) ],
	[ '\u0000 in a string', '"a\u0000b"' ],
	[ '\u0000 in a key', '{"a\u0000":1}' ],
	[ 'lone high surrogate', '"\ud800"' ],
	[ 'lone low surrogate', '"\udc00"' ],
	[ 'high surrogate then ASCII escape', '"\ud800\u0041"' ],
	[ 'two high surrogates', '"\ud800\ud800"' ],
	[ 'reversed pair', '"\ude00\ud83d"' ],
	[ 'escapes of every kind', '"\"\\\\\/\b\f\n\r\t\u0041\u00e9\u20ac"' ],
	[ 'invalid escape', '"\x"' ],
	[ 'short \u escape', '"\u12"' ],
	[ 'invalid hex', '"\u00zz"' ],
	[ 'numbers', '[-0,-0.0,0.000,1E5,1e+5,1e-5,-1.50,1.0e2,123456789012345678901234567890,1e308,1e-400]' ],
	[ 'huge exponents', '[1e130000,-1e-16000]' ],
	[ 'exponent beyond numeric', '1e1000000' ],
	[ 'negative exponent beyond numeric', '1e-1000000' ],
	[ 'exponent beyond int', '1e99999999999' ],
	[ 'leading zero', '01' ],
	[ 'trailing dot', '1.' ],
	[ 'leading dot', '.5' ],
	[ 'plus sign', '+1' ],
	[ 'bare e', '1e' ],
	[ 'NaN', 'NaN' ],
	[ 'Infinity', '-Infinity' ],
	[ 'whitespace everywhere', qq( \t\n\r{ \t"a" \n: \r[ 1 , { } , [ ] ] ,\n"b":true } \t) ],
	[ 'empty containers', '[{},[],[[]],[{}],{"a":{}},{"":[]}]' ],
	[ 'trailing comma', '{"a":1,}' ],
	[ 'missing colon', '{"a" 1}' ],
	[ 'unterminated', '[1,2' ],
	[ 'literals', '[true,false,null]' ],
	[ 'bad literal', 'tru' ],
	[ 'single quotes', q({'a':1}) ],
	[ 'control character in a string', qq("a\tb") ],
	[ 'deep nesting', ('[' x 1000) . '1' . (']' x 1000) ],
	[ 'deep objects with duplicates', ('{"a":1,"a":' x 500) . '1' . ('}' x 500) ],
	[ 'many duplicates', '{' . join(',', map { qq("k":$_) } 1 .. 10000) . '}' ],
	[ 'many duplicates of many keys', '{' . join(',', map { sprintf('"k%d":%d', $_ % 97, $_) } 1 .. 20000) . '}' ],
	[ 'reverse order with duplicates', '{' . join(',', map { sprintf('"k%05d":%d', (30000 - $_) % 7001, $_) } 1 .. 30000) . '}' ],
	[ 'sorted keys then a duplicate of the first', '{"a":1,"b":2,"c":3,"a":4}' ],
	[ 'sorted keys then a duplicate of the last', '{"a":1,"b":2,"c":3,"c":4}' ],
);
for my $c (@cases)
{
	check('postgres', @$c);
}
# The whole answer: duplicate members of the environment object itself.
check('postgres', 'duplicate top-level members',
	'{"type":"environment","id":"env_x","name":"first","description":null,"name":"second",'
	  . '"config":{"type":"self_hosted"},"metadata":{"a":1},"metadata":{"b":2},"scope":"organization",'
	  . '"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z","archived_at":null,'
	  . '"id":"env_c' . ($seq + 1) . '"}', whole => 1);
check('postgres', 'whitespace around the whole answer', "  \n\t" . env_text('env_c' . ($seq + 1), '1') . "\n\r  ", whole => 1);

# ASCII-only cases in SQL_ASCII and LATIN1 databases (non-ASCII escapes are
# spelled differently in SQL_ASCII on purpose).
for my $db ('sa', 'l1')
{
	for my $c (@cases)
	{
		next if $c->[1] =~ /[^\x00-\x7f]|\\u(?!00[0-7])/;
		check($db, @$c);
	}
}
check('l1', 'LATIN1: escaped and raw e-acute as keys', qq({"\\u00e9":1,"\x{e9}":2,"\\u00E9":3}));

# Random objects: small key pool (many duplicates), empty keys, escaped
# spellings of the same key, nesting, whitespace.
srand(930);
my @keys = ('', 'a', 'b', 'aa', 'ab', 'ba', '\u0061', 'a\u0061', 'zz', "\x{e9}", '\u00e9', 'k' x 40);
my @nums = ('-0', '0', '1E5', '1e+5', '-1.50', '0.000', '1e-5', '1e400', '123456789012345678901234567890', '2.5e-3');
sub ws { return (' ', '', "\n", "\t", '')[ int rand 5 ]; }
sub rnd
{
	my ($depth) = @_;
	my $r = rand;
	if ($depth < 4 && $r < 0.45)
	{
		my $n = int rand 12;
		return '{' . ws() . join(',', map { ws() . '"' . $keys[ int rand @keys ] . '"' . ws() . ':' . ws() . rnd($depth + 1) . ws() } 1 .. $n) . '}';
	}
	if ($depth < 4 && $r < 0.6)
	{
		my $n = int rand 5;
		return '[' . join(',', map { ws() . rnd($depth + 1) } 1 .. $n) . ws() . ']';
	}
	return $nums[ int rand @nums ] if $r < 0.8;
	return ('true', 'false', 'null', '""', '"s"', '"\u00e9\ud83d\ude00"')[ int rand 6 ];
}
for my $i (1 .. 150)
{
	my $v = rnd(0);
	$v = '{' . join(',', map { '"' . $keys[ int rand @keys ] . '":' . rnd(1) } 1 .. 30) . '}' if $i % 3 == 0;
	check('postgres', "random $i", $v);
}


# The same answers in SQL_ASCII and LATIN1: SQL_ASCII stores what the
# server sent as UTF-8 bytes (escapes above 007F spelled as their UTF-8), so
# raw's text is byte for byte the UTF8 database's; LATIN1 gives the same
# characters, or refuses an answer with a character LATIN1 lacks.
sub raw_hex
{
	my ($db, $id) = @_;
	my $enc = $db eq 'sa' ? 'SQL_ASCII' : 'UTF8';
	return $node->safe_psql($db, qq{SELECT t_try(\$\$SELECT encode(convert_to(raw::text, '$enc'), 'hex') FROM anthropic.env_get('$id')\$\$)});
}
sub check_enc
{
	my ($label, $x, %o) = @_;
	my $id = 'env_c' . (++$seq);
	my $body = $o{whole} ? $x : env_text($id, $x);
	$body =~ s/ID/$id/g;
	$fake->fault({ method => 'GET', path_regex => "^/v1/environments/$id\$", status => 200, times => -1,
		body => $body });
	my $u = raw_hex('postgres', $id);
	my $sa = raw_hex('sa', $id);
	my $l1 = raw_hex('l1', $id);
	if ($u =~ /^ok\|/)
	{
		is($sa, $u, "SQL_ASCII: $label: raw is the UTF8 database's, byte for byte");
		(my $unesc = $body) =~ s/\\u([0-9a-fA-F]{4})/chr(hex $1)/ge;
		if ($unesc =~ /[^\x00-\xff]/ || $body =~ /\\u[dD][89abAB]/)
		{
			like($l1, qr/^err\|08006\|malformed answer/, "LATIN1: $label: refused (a character LATIN1 lacks)");
		}
		else
		{
			is($l1, $u, "LATIN1: $label: raw has the UTF8 database's characters");
		}
	}
	else
	{
		like($sa, qr/^err\|08006\|malformed answer/, "SQL_ASCII: $label: refused as in UTF8 ($u)");
		like($l1, qr/^err\|08006\|malformed answer/, "LATIN1: $label: refused as in UTF8 ($u)");
	}
}

my @enc_cases = (
	[ 'escaped e-acute', '"\u00e9"' ],
	[ 'raw e-acute', qq("\x{e9}") ],
	[ 'escaped and raw keys', qq({"\\u00e9":1,"\x{e9}":2,"\\u00E9":3}) ],
	[ 'surrogate pair', '"\ud83d\ude00"' ],
	[ 'surrogate pair, upper case hex', '"\uD83D\uDE00"' ],
	[ 'largest pair', '"\udbff\udfff"' ],
	[ 'two-byte bounds', '"\u0080\u07ff"' ],
	[ 'three-byte bounds', '"\u0800\uffff\ufffe\ue000"' ],
	[ 'euro sign', '"\u20ac"' ],
	[ 'escaped backslash before u', '"\\\\u00e9"' ],
	[ 'escaped backslash then escape', '"\\\\\u00e9"' ],
	[ 'two escaped backslashes before u', '"\\\\\\\\u00e9"' ],
	[ 'escaped quote then u', '"\"u00e9"' ],
	[ 'ASCII escape of a backslash before u', '"\u005cu00e9"' ],
	[ 'mixed', qq(["a\\u00e9b\x{e9}c\\ud83d\\ude00d\x{1F600}", {"\\ud83d\\ude00":"\\u0041"}]) ],
	[ 'lone high surrogate', '"\ud83d"' ],
	[ 'lone high surrogate at the end of a string', '"a\ud83d"' ],
	[ 'high surrogate then ASCII escape', '"\ud83d\u0041"' ],
	[ 'high surrogate then text', '"\ud83dxx"' ],
	[ 'high surrogate then another high', '"\ud83d\ud83d\ude00"' ],
	[ 'lone low surrogate', '"\ude00"' ],
	[ 'high surrogate then escaped backslash', '"\ud83d\\\\ude00"' ],
	[ 'invalid hex', '"\u00eg"' ],
	[ 'invalid hex in the low half', '"\ud83d\ude0g"' ],
	[ 'short escape', '"\u00e"' ],
	[ 'escape of zero', '"\u0000"' ],
	[ 'escape outside a string', '[\u00e9]' ],
	[ 'keys differing only in escapes', '{"\u00e9\u00e9":1,"\u00e9\u00e8":2,"\u00e8\u00e9":3}' ],
);
check_enc(@$_) for @enc_cases;
# Escapes at the very end of the text (the answer is cut short).
my $head = '{"type":"environment","id":"ID","name":"';
check_enc('text ends in \u00e', $head . '\u00e', whole => 1);
check_enc('text ends in a backslash', $head . '\\', whole => 1);
check_enc('text ends in \u', $head . '\u', whole => 1);
check_enc('text ends in a high surrogate', $head . '\ud83d', whole => 1);
check_enc('text ends in a high surrogate and \u', $head . '\ud83d\u', whole => 1);
check_enc('text ends in a high surrogate and half a low one', $head . '\ud83d\ude0', whole => 1);
check_enc('text ends in a full escape', $head . '\u00e9', whole => 1);
check_enc('text ends in a pair', $head . '\ud83d\ude00', whole => 1);

diag("$seen{equal} cases compared equal, $seen{refused} refused by both");
cmp_ok($seen{equal}, '>', 150, 'most cases are valid JSON');
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal|server process .* was terminated/, 'no backend crashed');
$node->stop;
done_testing();
