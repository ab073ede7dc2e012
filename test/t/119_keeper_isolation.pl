# The lease keeper's SQL functions under REPEATABLE READ and SERIALIZABLE
# (found by a review): the poller and the keeper write held_work from their
# own transactions, so work_claim and work_finish read and write those rows
# with the latest snapshot, not the caller's.
# Expected behaviour is the issue's: work_claim returns the item's secret,
# work_finish raises 40001 only if the lease is no longer held.  Against the
# fake with a 2 s lease TTL (beats every second).
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $fake = FakeApi->start;
END { local $?; $fake->stop if $fake; }
$fake->call('POST', '/_fake/lease', { ttl_seconds => 2 });
my $node = $fake->new_node('review_iso',
	conf => "anthropic.sync_database = 'postgres'\nanthropic.sync_interval = '1h'\n");
$node->safe_psql('postgres', $FakeApi::T_TRY);

sub sq { return $node->safe_psql('postgres', $_[0]); }
sub poll_until { return FakeApi::poll_until($node, @_); }
sub lease { return sq("SELECT state FROM anthropic.leases WHERE work_id = '$_[0]'"); }

like(poll_until(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('anthropic_env keeper', 'anthropic_env poller')}, '2', 10),
	qr/^2$/, 'the keeper and the poller run');
my $env = FakeApi::new_env($node, 'iso');
sq("SELECT anthropic.serve('$env')");

# 1. A waiting work_claim under REPEATABLE READ: the poller stores the item
# (and its secret) while the claim waits, after the statement's snapshot.
# The claim must still hand out the secret and the metadata.
for my $iso ('REPEATABLE READ', 'SERIALIZABLE')
{
	my $w = $fake->enqueue($env, { metadata => { k => 'v' } });
	my $got = sq("BEGIN ISOLATION LEVEL $iso;\n"
		  . "SELECT work_id, secret IS NOT NULL, metadata IS NOT NULL FROM anthropic.work_claim('$env', '5s');\n"
		  . "COMMIT;");
	is($got, "$w|t|t", "$iso: a waiting work_claim returns the item with its secret and metadata");
	my ($secret_stored) = sq("SELECT count(*) FROM anthropic.work_secrets WHERE work_id = '$w'");
	is($secret_stored, '1', "$iso: (the secret is stored)");
	# The claiming session ended, so the item is ready again; finish it.
	is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w'", 'ready', 5), 'ready',
		"$iso: (the item is ready again once its session ended)");
	is(sq("SELECT w.work_id FROM anthropic.work_claim('$env', '2s') w, anthropic.work_finish(w.work_id)"), $w,
		"$iso: (finished in READ COMMITTED)");
}

# 2. work_finish under REPEATABLE READ while the lease is held throughout:
# the keeper writes the item's held_work row after every beat, so any
# transaction whose snapshot is older than one beat gets a 40001 from
# work_finish's UPDATE although the lease is still held.  The caller, told
# by the hint that the item is gone, rolls back and abandons an item its
# session still claims.
for my $iso ('REPEATABLE READ', 'SERIALIZABLE')
{
	my $w = $fake->enqueue($env);
	my $bg = $node->background_psql('postgres', on_error_stop => 0);
	$bg->query_until(qr/claimed1/, "SELECT work_id AS w FROM anthropic.work_claim('$env', '5s') \\gset\n\\echo claimed1\n");
	is(lease($w), 'claimed', "$iso: claimed by a session");
	$bg->query_until(qr/began1/,
		"BEGIN ISOLATION LEVEL $iso;\nSELECT count(*) FROM anthropic.held_work;\n\\echo began1\n");
	sleep 3;    # the work: longer than one beat interval, shorter than the TTL
	is(lease($w), 'claimed', "$iso: the lease is still held by that session");
	$bg->{stderr} = '';
	my $out = $bg->query("\\set VERBOSITY verbose\nSELECT anthropic.work_finish(:'w') IS NULL AS finished;\nCOMMIT;\n");
	my $err = $bg->{stderr} // '';
	unlike($err, qr/40001/, "$iso: work_finish of a held lease raises no 40001") or diag($err);
	is(poll_until("SELECT state FROM anthropic.leases WHERE work_id = '$w'", 'finished', 3), 'finished',
		"$iso: the item is finished after the commit");
	$bg->quit;
	poll_until("SELECT state IN ('ready', 'finished') FROM anthropic.leases WHERE work_id = '$w'", 't', 5);
	sq("SELECT w.work_id FROM anthropic.work_claim('$env', '1s') w, anthropic.work_finish(w.work_id)")
	  if lease($w) eq 'ready';
}

done_testing();
