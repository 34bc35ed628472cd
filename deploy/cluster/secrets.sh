#!/usr/bin/env bash
# Makes the secrets the relays of deploy/cluster/docker-compose.yml share, in
# deploy/cluster/secrets/ (mode 0600), and writes deploy/cluster/.env for compose:
#
#   cert.pem, key.pem   one certificate (ECDSA P-256, self-signed) for every relay, so one
#                       invitation works with any of them
#   master.key          the master key (64 hex digits): mailbox secrets are sealed with it
#                       before they reach Valkey; the cluster store refuses to start without it
#   quic-reset.key      32 random bytes behind QUIC stateless resets; the same on every relay,
#                       so a relay can reset a connection a lost relay held (deploy/README.md)
#   forward.key         the relays' forwarding key (a zero byte, then 32 random bytes: the
#                       unsealed form of DATA_DIR/forward.key); one for every relay, since one
#                       invitation carries one forwarding key (docs/FORWARDING.md)
#   .env                SEALPOST_KEY_PIN (the certificate's key pin, for the health checks and
#                       for clients) and SEALPOST_UID/GID (whom the relays run as, so that
#                       they can read these 0600 files)
#
# Existing files are kept: run it again after removing one to make that one anew. A new
# certificate key invalidates the invitations that pin the old one; a new master key makes the
# mailbox secrets already in Valkey unreadable.
#
# Usage: deploy/cluster/secrets.sh
set -euo pipefail

say() { echo "cluster/secrets: $*" >&2; }
die() {
    say "error: $*"
    exit 1
}
command -v openssl >/dev/null || die "openssl is needed to make the certificate and keys"

here=$(cd "$(dirname "$0")" && pwd)
out=$here/secrets
umask 077
mkdir -p "$out"

if [ ! -e "$out/key.pem" ] || [ ! -e "$out/cert.pem" ]; then
    [ -e "$out/key.pem" ] && say "cert.pem is missing: a new pair replaces key.pem (invitations pinning the old key stop working)"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$out/key.pem" -out "$out/cert.pem" -days 825 -subj /CN=sealpost-relay \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null ||
        die "openssl could not make the certificate"
    say "made cert.pem and key.pem"
fi
if [ ! -e "$out/master.key" ]; then
    openssl rand -hex 32 >"$out/master.key"
    say "made master.key: back it up apart from the Valkey backups"
fi
if [ ! -e "$out/quic-reset.key" ]; then
    openssl rand 32 >"$out/quic-reset.key"
    say "made quic-reset.key"
fi
if [ ! -e "$out/forward.key" ]; then
    { printf '\000'; openssl rand 32; } >"$out/forward.key"
    say "made forward.key (a new one makes forwarded deposits with older invitations fail)"
fi

pin=$(openssl x509 -in "$out/cert.pem" -noout -pubkey |
    openssl pkey -pubin -outform DER | openssl dgst -sha256 -r | cut -d' ' -f1)
[ ${#pin} -eq 64 ] || die "could not compute the key pin of $out/cert.pem"

# The relays read the files as this user; as root, hand them to the image's nonroot user.
uid=$(id -u)
gid=$(id -g)
if [ "$uid" -eq 0 ]; then
    uid=65532
    gid=65532
    chown "$uid:$gid" "$out"/cert.pem "$out"/key.pem "$out"/master.key "$out"/quic-reset.key
fi
chmod 0600 "$out"/cert.pem "$out"/key.pem "$out"/master.key "$out"/quic-reset.key

cat >"$here/.env" <<ENV
# Written by deploy/cluster/secrets.sh.
SEALPOST_KEY_PIN=$pin
SEALPOST_UID=$uid
SEALPOST_GID=$gid
ENV
say "key pin $pin (clients: --key-pin $pin; relays on 127.0.0.1:4433 and 127.0.0.1:4434)"
