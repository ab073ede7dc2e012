# Upgrades: CREATE EXTENSION at 0.1.0, fill the mirror, ALTER EXTENSION
# UPDATE; the extension's objects must then equal those of a fresh
# CREATE EXTENSION at the default version, and the mirrored rows survive.
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $fake = FakeApi->start;
$fake->bulk(40);
my $node = $fake->new_node('upgrade', create => 0);

my $default = $node->safe_psql('postgres',
	q{SELECT default_version FROM pg_available_extensions WHERE name = 'anthropic_env'});
like($default, qr/^\d+\.\d+\.\d+$/, "the default version is $default");
isnt($default, '0.1.0', 'the default version is newer than 0.1.0');

$node->safe_psql('postgres', q{CREATE EXTENSION anthropic_env VERSION '0.1.0'});
is($node->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'anthropic_env'}),
	'0.1.0', 'installed at 0.1.0');
is($node->safe_psql('postgres', q{SELECT status || ' ' || inserted FROM anthropic.sync()}),
	'ok 40', 'sync() at 0.1.0 fills the mirror');
$node->safe_psql('postgres', q{SELECT anthropic.env_archive(id) FROM anthropic.env_list() ORDER BY id LIMIT 3});
$node->safe_psql('postgres', q{SELECT anthropic.env_delete(id) FROM anthropic.env_list() ORDER BY id DESC LIMIT 2});
is($node->safe_psql('postgres', q{SELECT status || ' ' || updated || ' ' || marked_deleted FROM anthropic.sync()}),
	'ok 3 2', 'a second sync records changes and deletions');

# The mirror's whole content, and its history, as text.
my $rows = q{SELECT md5(string_agg(e::text, E'\n' ORDER BY id)) || ' ' || count(*) FROM anthropic.environments e};
my $runs = q{SELECT string_agg(run_id || ' ' || status || ' ' || seen || ' ' || inserted || ' ' || updated || ' ' || marked_deleted, ', ' ORDER BY run_id) FROM anthropic.sync_runs};
my $rows_before = $node->safe_psql('postgres', $rows);
my $runs_before = $node->safe_psql('postgres', $runs);

$node->safe_psql('postgres', 'ALTER EXTENSION anthropic_env UPDATE');
is($node->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'anthropic_env'}),
	$default, "ALTER EXTENSION UPDATE reaches $default");
is($node->safe_psql('postgres', $rows), $rows_before, 'the mirrored environments are intact');
is($node->safe_psql('postgres', $runs), $runs_before, 'the sync history is intact');

$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION anthropic_env');

# Every object of the extension, with what defines it: function
# definitions, owners, grants and comments; relations with their kind,
# persistence, columns, defaults, constraints, indexes, triggers and view
# definitions; types with their attributes.
my $objects = q{
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'anthropic_env'),
members AS (
	SELECT d.classid, d.objid FROM pg_depend d, ext
	WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'),
rels AS (
	SELECT objid AS oid FROM members WHERE classid = 'pg_class'::regclass
	UNION
	SELECT t.typrelid FROM pg_type t JOIN members m ON m.classid = 'pg_type'::regclass AND m.objid = t.oid
	WHERE t.typrelid <> 0)
SELECT line FROM (
	SELECT format('function %s owner=%s acl=%s comment=%s def=%s', p.oid::regprocedure,
			p.proowner::regrole, p.proacl, obj_description(p.oid, 'pg_proc'), pg_get_functiondef(p.oid)) AS line
	FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
	UNION ALL
	SELECT format('type %s kind=%s comment=%s', t.oid::regtype, t.typtype, obj_description(t.oid, 'pg_type'))
	FROM pg_type t JOIN members m ON m.classid = 'pg_type'::regclass AND m.objid = t.oid
	UNION ALL
	SELECT format('relation %s kind=%s persistence=%s owner=%s acl=%s comment=%s view=%s',
			c.oid::regclass, c.relkind, c.relpersistence, c.relowner::regrole, c.relacl,
			obj_description(c.oid, 'pg_class'),
			CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END)
	FROM pg_class c JOIN rels r ON r.oid = c.oid
	UNION ALL
	SELECT format('column %s.%s %s notnull=%s default=%s identity=%s generated=%s acl=%s comment=%s',
			c.oid::regclass, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
			pg_get_expr(ad.adbin, ad.adrelid), a.attidentity, a.attgenerated, a.attacl,
			col_description(c.oid, a.attnum))
	FROM pg_class c JOIN rels r ON r.oid = c.oid
	JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
	LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
	UNION ALL
	SELECT format('index %s', pg_get_indexdef(i.indexrelid))
	FROM pg_index i JOIN rels r ON r.oid = i.indrelid
	UNION ALL
	SELECT format('constraint %s %s %s', co.conrelid::regclass, co.conname, pg_get_constraintdef(co.oid))
	FROM pg_constraint co JOIN rels r ON r.oid = co.conrelid
	UNION ALL
	SELECT format('trigger %s', pg_get_triggerdef(tg.oid))
	FROM pg_trigger tg JOIN rels r ON r.oid = tg.tgrelid WHERE NOT tg.tgisinternal
	UNION ALL
	SELECT format('schema %s owner=%s acl=%s', n.nspname, n.nspowner::regrole, n.nspacl)
	FROM pg_namespace n WHERE n.nspname = 'anthropic'
	UNION ALL
	SELECT format('config %s', unnest(extconfig)::regclass) FROM pg_extension WHERE extname = 'anthropic_env'
) s ORDER BY line};

my $upgraded = $node->safe_psql('postgres', $objects);
my $fresh = $node->safe_psql('fresh', $objects);
cmp_ok(scalar(() = $fresh =~ /^function /mg), '>=', 20, 'the description lists the extension\'s functions');
like($fresh, qr/^relation anthropic\.environments kind=r/m, 'the description lists the mirror table');
like($fresh, qr/^column anthropic\.environment\.raw jsonb/m, 'the description lists row type attributes');
like($fresh, qr/^index CREATE/m, 'the description lists indexes');
is($upgraded, $fresh, 'the upgraded extension equals a fresh install, object for object');
if ($upgraded ne $fresh)
{
	my %f = map { $_ => 1 } split /\n/, $fresh;
	my %u = map { $_ => 1 } split /\n/, $upgraded;
	diag "only after the upgrade: $_" for grep { !$f{$_} } sort keys %u;
	diag "only in a fresh install: $_" for grep { !$u{$_} } sort keys %f;
}

# The upgraded extension works: a sync after the upgrade sees no change.
is($node->safe_psql('postgres', q{SELECT status || ' ' || inserted || ' ' || updated FROM anthropic.sync()}),
	'ok 0 0', 'sync() after the upgrade finds the mirror up to date');
is($node->safe_psql('postgres', $rows), $rows_before, 'and leaves the mirrored rows as they were');

done_testing();
