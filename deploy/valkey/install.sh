#!/usr/bin/env bash
# Installs Valkey 8 (valkey-server, valkey-tools) from Debian's bookworm-backports suite, the
# engine of the cluster store (issue 12). Debian 12's own Redis is 7.0, which lacks WAITAOF, the
# command the store's durability promise rests on.
#
# On Debian 12 the backports suite is added to apt's sources when it is missing, as a deb822
# file next to the existing ones that reuses their mirror, snapshot comment and Signed-By key.
# The packaged valkey-server service is stopped and disabled afterwards: the tests, CI and
# deploy/valkey/cluster.sh start their own nodes with their own settings, and a stray node on
# 6379 with Debian's defaults would only confuse.
#
# Usage: deploy/valkey/install.sh        (as root, or as a user who may sudo)
set -euo pipefail

say() { echo "valkey/install: $*" >&2; }
die() {
    say "error: $*"
    exit 1
}

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "run this as root (or install sudo): it changes apt's sources and installs packages"
    sudo=(sudo)
fi

codename=""
if [ -r /etc/os-release ]; then
    codename=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release | tr -d '"')
fi

sources_dir=/etc/apt/sources.list.d
backports_file=$sources_dir/bookworm-backports.sources

# Whether any enabled apt source (one-line or deb822) already names bookworm-backports.
has_backports() {
    local f
    for f in /etc/apt/sources.list "$sources_dir"/*.list "$sources_dir"/*.sources; do
        [ -r "$f" ] || continue
        if grep -Eq '^[^#]*bookworm-backports' "$f"; then
            return 0
        fi
    done
    return 1
}

# Prints a deb822 stanza for bookworm-backports modelled on the first enabled stanza of
# debian.sources (or any *.sources file) whose suites include plain "bookworm": same URIs, same
# Signed-By, and the comment lines above URIs (the snapshot address) kept as they are. Prints
# nothing and fails when no file has such a stanza.
backports_stanza() {
    local f
    for f in "$sources_dir"/debian.sources "$sources_dir"/*.sources; do
        [ -r "$f" ] || continue
        awk '
            function flush() {
                if (uris != "" && bookworm && !disabled) {
                    print "Types: deb"
                    if (comment != "") printf "%s", comment
                    print "URIs: " uris
                    print "Suites: bookworm-backports"
                    print "Components: " (components != "" ? components : "main")
                    if (signed != "") print "Signed-By: " signed
                    found = 1
                    exit
                }
                uris = ""; comment = ""; signed = ""; components = ""; bookworm = 0; disabled = 0
            }
            /^[[:space:]]*$/ { flush(); next }
            /^#/ { if (uris == "") comment = comment $0 "\n"; next }
            /^URIs:/ { uris = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "bookworm") bookworm = 1 }
            /^Components:/ { components = substr($0, index($0, $2)) }
            /^Signed-By:/ { signed = $2 }
            /^Enabled:[[:space:]]*no/ { disabled = 1 }
            END { if (!found) flush(); exit !found }
        ' "$f" && return 0
    done
    return 1
}

target=()
if [ "$codename" = bookworm ]; then
    target=(-t bookworm-backports)
    if has_backports; then
        say "bookworm-backports is already among apt's sources"
    else
        stanza=$(backports_stanza) || die "found no enabled Debian 'bookworm' entry in $sources_dir/*.sources to model bookworm-backports on; add the suite by hand (https://backports.debian.org/Instructions/) and run this again"
        say "adding $backports_file:"
        printf '%s\n' "$stanza" >&2
        printf '%s\n' "$stanza" | "${sudo[@]}" tee "$backports_file" >/dev/null
    fi
elif [ -n "$codename" ]; then
    say "this is Debian/Ubuntu '$codename', not bookworm: installing valkey from its own suites"
fi

say "apt-get update"
"${sudo[@]}" apt-get update -q >&2
say "apt-get install ${target[*]} valkey-server valkey-tools"
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${target[@]}" valkey-server valkey-tools >&2

# The packaged service: stopped, and kept from starting at boot, whichever init runs here.
# (`systemctl disable` works without a running systemd: it edits the unit links and the SysV
# ones; the package enables both.)
if [ -d /run/systemd/system ]; then
    "${sudo[@]}" systemctl stop valkey-server.service >&2 || true
elif [ -x /etc/init.d/valkey-server ]; then
    "${sudo[@]}" /etc/init.d/valkey-server stop >&2 || true
fi
if command -v systemctl >/dev/null; then
    "${sudo[@]}" systemctl disable valkey-server.service >&2 || true
elif command -v update-rc.d >/dev/null; then
    "${sudo[@]}" update-rc.d valkey-server disable >&2 || true
fi

version=$(valkey-server --version) || die "valkey-server does not run after installation"
major=$(sed -n 's/.* v=\([0-9]*\)\..*/\1/p' <<<"$version")
if [ -z "$major" ] || [ "$major" -lt 8 ]; then
    die "installed '$version', but the cluster store needs Valkey 8 or later (WAITAOF)"
fi
say "installed: $version"
