# FakeApi: starts test/fake-anthropic-api for a TAP test and drives its
# /_fake/ control endpoints over loopback HTTP.
package FakeApi;

use strict;
use warnings;

use HTTP::Tiny;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use JSON::PP;
use Test::More;
use Time::HiRes qw(time);

our $KEY = 'sk-ant-fake-test-key';

# Every fake started, so that the END block stops those a test forgot.
my @started;
END { $_->stop for grep { defined } @started; }

# SQL for t_try(q): runs a query, returns "ok|<first value>" or
# "err|SQLSTATE|message|detail" (newlines folded) for any error but a cancel.
our $T_TRY = q{
CREATE FUNCTION t_try(q text) RETURNS text LANGUAGE plpgsql AS $f$
DECLARE
	r text;
	st text;
	msg text;
	det text;
BEGIN
	EXECUTE q INTO r;
	RETURN 'ok|' || coalesce(r, '');
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL;
	RETURN 'err|' || st || '|' || translate(msg, E'\n', ' ') || '|' || translate(coalesce(det, ''), E'\n', ' ');
END $f$};

sub start
{
	my ($class, @extra) = @_;
	my $prog = $ENV{FAKE_API} // 'test/fake-anthropic-api';
	my ($in, $out, $err) = ('', '', '');
	my $h = IPC::Run::start([ 'python3', $prog, '--port', '0', '--quiet', '--api-key', $KEY, @extra ],
		\$in, \$out, \$err);
	my $deadline = time + 20;
	while ($out !~ m{listening on (https?://127\.0\.0\.1:\d+)})
	{
		die "fake API did not start: $err" if time > $deadline || !$h->pumpable;
		$h->pump_nb;
		select(undef, undef, undef, 0.05);
	}
	$out =~ m{listening on (https?://127\.0\.0\.1:\d+)};
	my $self = bless {
		h => $h,
		url => $1,
		http => HTTP::Tiny->new(timeout => 60, keep_alive => 0),
	}, $class;
	push @started, $self;
	return $self;
}

sub url { return $_[0]->{url}; }

# Runs $sql on $node until it returns $want or $seconds pass; returns the
# last answer.
sub poll_until
{
	my ($node, $sql, $want, $seconds) = @_;
	my $got = '';
	my $deadline = time + $seconds;
	while (time < $deadline)
	{
		$got = $node->safe_psql('postgres', $sql);
		return $got if $got eq $want;
		select(undef, undef, undef, 0.05);
	}
	return $got;
}

sub call
{
	my ($self, $method, $path, $body) = @_;
	my %opts;
	if (defined $body)
	{
		$opts{content} = encode_json($body);
		$opts{headers} = { 'content-type' => 'application/json' };
	}
	my $res = $self->{http}->request($method, $self->{url} . $path, \%opts);
	die "fake API $method $path failed: $res->{status} $res->{content}"
	  unless $res->{success};
	return length($res->{content}) ? decode_json($res->{content}) : undef;
}

sub reset { $_[0]->call('POST', '/_fake/reset'); }
sub fault { $_[0]->call('POST', '/_fake/faults', $_[1]); }
sub clear_faults { $_[0]->call('DELETE', '/_fake/faults'); }
sub requests { return $_[0]->call('GET', '/_fake/requests')->{data}; }
sub clear_requests { $_[0]->call('DELETE', '/_fake/requests'); }
sub stats { return $_[0]->call('GET', '/_fake/stats'); }
sub bulk { return $_[0]->call('POST', '/_fake/environments/bulk', { count => $_[1], %{ $_[2] // {} } }); }

# How many logged /v1 requests have a path matching $re (answered only,
# when $answered).
sub requests_matching
{
	my ($self, $re, $answered) = @_;
	return scalar grep { $_->{path} =~ $re && (!$answered || defined $_->{status}) } @{ $self->requests };
}

# Queues a work item on environment $env (optional body); returns its id.
sub enqueue
{
	my ($self, $env, $body) = @_;
	return $self->call('POST', "/_fake/environments/$env/work", $body // {})->{id};
}

# Creates a self-hosted environment named $name through $node; returns its id.
sub new_env
{
	my ($node, $name) = @_;
	return $node->safe_psql('postgres',
		qq{SELECT id FROM anthropic.env_create('{"name": "$name", "config": {"type": "self_hosted"}}')});
}

# Waits up to 10 s for the lease keeper and the work poller of $node to
# run; returns how many run.
sub workers_run
{
	my ($node) = @_;
	return poll_until($node,
		q{SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('anthropic_env keeper', 'anthropic_env poller')},
		'2', 10);
}

# The logged /v1 requests whose path matches $re, in arrival order.
sub requests_for
{
	my ($self, $re) = @_;
	return grep { $_->{path} =~ $re } @{ $self->requests };
}

# Calls $cond every 20 ms until it returns true (1) or $seconds pass (0).
sub wait_for
{
	my ($cond, $seconds) = @_;
	my $deadline = time + $seconds;
	while (time < $deadline)
	{
		return 1 if $cond->();
		select(undef, undef, undef, 0.02);
	}
	return 0;
}

# Sleeps until the epoch time $t (no sleep if it has passed).
sub sleep_until
{
	my $d = $_[0] - time;
	select(undef, undef, undef, $d) if $d > 0;
}

# Waits until the session named $app shows the Extension wait event and
# $ready (a sub, optional) agrees; returns its pid, or '' after 10 s.
sub wait_in_extension
{
	my ($node, $app, $ready) = @_;
	for (1 .. 400)
	{
		my $pid = $node->safe_psql('postgres',
			"SELECT pid FROM pg_stat_activity WHERE application_name = '$app' AND wait_event_type = 'Extension'");
		return $pid if $pid ne '' && (!$ready || $ready->());
		select(undef, undef, undef, 0.025);
	}
	return '';
}

# "state|query" of backend $pid while it sleeps in pg_sleep, read as $role;
# '' when it does not within 1 s.
sub activity_while_sleeping
{
	my ($node, $pid, $role) = @_;
	for (1 .. 50)
	{
		my $active = $node->safe_psql('postgres',
			"SELECT state || '|' || query FROM pg_stat_activity WHERE pid = $pid AND wait_event = 'PgSleep'",
			extra_params => [ '-U', $role ]);
		return $active if $active ne '';
		select(undef, undef, undef, 0.02);
	}
	return '';
}

sub stop
{
	my $self = shift;
	return unless $self->{h};
	$self->{h}->signal('TERM');
	eval { $self->{h}->finish; };
	delete $self->{h};
}

sub DESTROY { $_[0]->stop; }

# A PostgreSQL::Test::Cluster node with the extension preloaded and pointed
# at this fake.  The key goes into postgresql.conf, never into SQL text;
# key_via => 'env' passes it in the server's environment instead (which
# PostgreSQL itself logs at log_min_messages >= debug3); create => 0 leaves
# CREATE EXTENSION to the test.
sub new_node
{
	my ($self, $name, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%{ $opts{init} // {} });
	my $libs = $opts{preload} // 'anthropic_env';
	my $key = $opts{api_key} // $KEY;
	my $via_env = ($opts{key_via} // 'conf') eq 'env';
	$node->append_conf('postgresql.conf', "shared_preload_libraries = '$libs'\n"
		  . "anthropic.base_url = '$self->{url}'\n"
		  . ($via_env ? '' : "anthropic.api_key = '$key'\n")
		  . ($opts{conf} // ''));
	local $ENV{ANTHROPIC_API_KEY} = $via_env ? $key : undef;
	delete $ENV{ANTHROPIC_API_KEY} unless $via_env;
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION anthropic_env') if $opts{create} // 1;
	return $node;
}

1;
