# Security: TLS peer and host verification is always on (design.md section
# 2).  The fake serves HTTPS with certificates made here with the openssl
# CLI: a throwaway CA, a server certificate for 127.0.0.1 and localhost, one
# for another host name, and a self-signed one.
#   - without anthropic.ca_file the call fails with 08006 naming
#     certificate verification, and no request (so no key) reaches the server;
#   - with anthropic.ca_file pointing at the CA it works, over 127.0.0.1 and
#     localhost;
#   - a certificate for another host name, or one the CA did not sign, fails;
#   - taking ca_file away again in the same session fails again (a verified
#     connection is not reused under weaker settings);
#   - plain http:// to a non-loopback host is refused at SET.
use strict;
use warnings;

use FakeApi;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use JSON::PP;
use Test::More;

my $dir = "$PostgreSQL::Test::Utils::tmp_check/tls";
mkdir $dir;

sub ossl { my @cmd = ('openssl', @_); system(@cmd) == 0 or die "@cmd failed"; }

# The CA.
ossl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
	'-keyout', "$dir/ca.key", '-out', "$dir/ca.pem", '-days', '2',
	'-subj', '/CN=anthropic_env test CA',
	'-addext', 'basicConstraints=critical,CA:TRUE',
	'-addext', 'keyUsage=critical,keyCertSign,cRLSign');

# A certificate signed by the CA for the given subjectAltName.
sub server_cert
{
	my ($name, $san) = @_;
	ossl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
		'-keyout', "$dir/$name.key", '-out', "$dir/$name.csr", '-subj', "/CN=$name");
	open my $fh, '>', "$dir/$name.ext" or die;
	print $fh "subjectAltName=$san\nbasicConstraints=CA:FALSE\n"
	  . "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n";
	close $fh;
	ossl('x509', '-req', '-in', "$dir/$name.csr", '-CA', "$dir/ca.pem", '-CAkey', "$dir/ca.key",
		'-CAcreateserial', '-out', "$dir/$name.pem", '-days', '2', '-extfile', "$dir/$name.ext");
}
server_cert('good', 'IP:127.0.0.1,DNS:localhost');
server_cert('wrong', 'DNS:wrong.example');
# Self-signed, for the right host, but not from the CA.
ossl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
	'-keyout', "$dir/self.key", '-out', "$dir/self.pem", '-days', '2', '-subj', '/CN=127.0.0.1',
	'-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost');
chmod 0644, glob("$dir/*.pem");
chmod 0755, $dir;

my $good = FakeApi->start('--tls-cert', "$dir/good.pem", '--tls-key', "$dir/good.key");
my $wrong = FakeApi->start('--tls-cert', "$dir/wrong.pem", '--tls-key', "$dir/wrong.key");
my $self = FakeApi->start('--tls-cert', "$dir/self.pem", '--tls-key', "$dir/self.key");
like($good->url, qr{^https://127\.0\.0\.1:\d+$}, 'the fake serves https');

# Control calls over TLS go through the curl CLI (HTTP::Tiny has no TLS
# here); they skip verification (-k) since two of the servers are meant to
# fail it.  They carry no key.
sub ctl
{
	my ($fake, $method, $path) = @_;
	my $out = `curl -sS -k --max-time 30 -X $method $fake->{url}$path`;
	return $out eq '' ? undef : decode_json($out);
}
sub v1_requests { return scalar @{ ctl($_[0], 'GET', '/_fake/requests')->{data} }; }

my $node = $good->new_node('tls');
my ($port) = $good->url =~ /:(\d+)$/;
my ($wport) = $wrong->url =~ /:(\d+)$/;
my ($sport) = $self->url =~ /:(\d+)$/;

$node->safe_psql('postgres', $FakeApi::T_TRY);

sub try_in
{
	my ($settings, $sql) = @_;
	(my $q = $sql) =~ s/'/''/g;
	return $node->safe_psql('postgres', "$settings\nSELECT t_try('$q')");
}

my $create = q{SELECT name FROM anthropic.env_create('{"name": "tls"}')};

# Without ca_file: the system trust store does not know the CA.
ctl($good, 'DELETE', '/_fake/requests');
my $r = try_in('', $create);
like($r, qr/^err\|08006\|/, 'without anthropic.ca_file the call fails with 08006') or diag $r;
like($r, qr/could not establish a verified TLS connection/, 'the message names TLS verification');
like($r, qr/certificate/i, 'the DETAIL names the certificate problem');
like($r, qr/Attempts: 1\./, 'a verification failure is not retried');
is(v1_requests($good), 0, 'nothing was sent to the unverified server');

# With ca_file: it works, by IP and by name.
my $ca = "SET anthropic.ca_file = '$dir/ca.pem';";
$r = try_in($ca, $create);
is($r, 'ok|tls', 'with anthropic.ca_file pointing at the CA, env_create works');
$r = try_in("$ca SET anthropic.base_url = 'https://localhost:$port';",
	q{SELECT count(*) FROM anthropic.env_list() WHERE name = 'tls'});
is($r, 'ok|1', 'https://localhost:PORT works too (SAN DNS:localhost)');
is(v1_requests($good), 2, 'the server saw exactly those two requests');

# ca_file set in postgresql.conf works for every session.
$node->append_conf('postgresql.conf', "anthropic.ca_file = '$dir/ca.pem'\n");
$node->reload;
$r = try_in('', q{SELECT count(*) FROM anthropic.env_list()});
is($r, 'ok|1', 'anthropic.ca_file from postgresql.conf is used');

# A certificate for another host name fails, even from the trusted CA.
$r = try_in("$ca SET anthropic.base_url = 'https://127.0.0.1:$wport';", $create);
like($r, qr/^err\|08006\|could not establish a verified TLS connection/,
	'a certificate for another host name fails with 08006') or diag $r;
like($r, qr/host ?name|subject name|does not match/i, 'the DETAIL says the name does not match');
is(v1_requests($wrong), 0, 'nothing was sent to the wrong host');
$r = try_in("$ca SET anthropic.base_url = 'https://localhost:$wport';", $create);
like($r, qr/^err\|08006\|/, 'by name (localhost) as well');

# A self-signed certificate for the right name fails.
$r = try_in("$ca SET anthropic.base_url = 'https://127.0.0.1:$sport';", $create);
like($r, qr/^err\|08006\|could not establish a verified TLS connection.*certificate/i,
	'a self-signed certificate fails with 08006') or diag $r;
is(v1_requests($self), 0, 'nothing was sent to the self-signed server');

# A ca_file that does not exist is an error, not "no verification".
$r = try_in("SET anthropic.ca_file = '$dir/missing.pem';", $create);
like($r, qr/^err\|08006\|could not establish a verified TLS connection/,
	'a missing ca_file fails with 08006') or diag $r;

# In ONE session: verified, then ca_file taken away -> fails again (the
# cached connection is not reused without verification), then back.
my $seq = $node->safe_psql('postgres', qq{
SET anthropic.ca_file = '$dir/ca.pem';
SELECT t_try('SELECT count(*) FROM anthropic.env_list()');
SET anthropic.ca_file = '$dir/self.pem';
SELECT t_try('SELECT count(*) FROM anthropic.env_list()');
SET anthropic.ca_file = '$dir/ca.pem';
SELECT t_try('SELECT count(*) FROM anthropic.env_list()');
});
my @seq = split /\n/, $seq;
is($seq[0], 'ok|1', 'same session: verified call works');
like($seq[1] // '', qr/^err\|08006\|/, 'same session: another CA, the next call fails (no reuse of the verified connection)');
is($seq[2], 'ok|1', 'same session: back to the CA, it works again');

# Plain http:// is refused for non-loopback hosts at SET, before any connection.
my ($rc, $out, $err) = $node->psql('postgres', q{SET anthropic.base_url = 'http://example.com'});
isnt($rc, 0, 'SET anthropic.base_url to http:// on a non-loopback host fails');
like($err, qr/invalid value for parameter "anthropic.base_url".*\n.*DETAIL:\s+Plain http:\/\/ is allowed only for loopback hosts/,
	'with a DETAIL saying why');
($rc, $out, $err) = $node->psql('postgres', q{ALTER SYSTEM SET anthropic.base_url = 'http://10.1.2.3:8080'});
isnt($rc, 0, 'ALTER SYSTEM with such a URL fails as well');
# https to the fake, by a name that is not loopback, is allowed at SET.
($rc, $out, $err) = $node->psql('postgres', q{SET anthropic.base_url = 'https://api.example.com'});
is($rc, 0, 'https:// to any host is accepted');

$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/\Q$FakeApi::KEY\E/, 'the key is not in the server log');

done_testing();
