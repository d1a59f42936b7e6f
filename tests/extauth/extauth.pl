#!/usr/bin/perl
# An ejabberd external authentication script in Perl, in the style of the ones operators run today:
# read a 2-byte big-endian length and the request, answer pack("nn", 2, result). Accounts are a small
# table; "die" as a password makes the script exit without answering (the server restarts it).
use strict;
use warnings;

my %users = (alice => 'wonderland', carol => 'c4r0l:with:colons');
binmode STDIN;
binmode STDOUT;
$| = 1;

while (1) {
    my $buf = '';
    last if sysread(STDIN, $buf, 2) != 2;
    my $len = unpack('n', $buf);
    my $data = '';
    while (length($data) < $len) {
        my $n = sysread(STDIN, $data, $len - length($data), length($data));
        exit 0 unless $n;
    }
    my ($op, $user, $host, $pass) = split(/:/, $data, 4);
    my $ok = 0;
    if ($op eq 'auth') {
        exit 1 if defined $pass && $pass eq 'die';
        $ok = 1 if exists $users{$user} && $users{$user} eq $pass;
    } elsif ($op eq 'isuser') {
        $ok = 1 if exists $users{$user};
    } elsif ($op eq 'setpass') {
        if (exists $users{$user}) { $users{$user} = $pass; $ok = 1; }
    } elsif ($op eq 'tryregister') {
        unless (exists $users{$user}) { $users{$user} = $pass; $ok = 1; }
    } elsif ($op eq 'removeuser') {
        $ok = 1 if delete $users{$user};
    } elsif ($op eq 'removeuser3') {
        if (exists $users{$user} && $users{$user} eq $pass) { delete $users{$user}; $ok = 1; }
    }
    syswrite(STDOUT, pack('nn', 2, $ok));
}
