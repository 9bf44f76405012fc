#!/bin/sh
# Installs Debian packages of another architecture into a root directory without running any of
# their code, so a multi-platform build does no package work under emulation.
#
#   debs.sh ARCH BASE ROOT PACKAGE...
#
# BASE is the root the packages go on top of, usually the target's base image bind-mounted
# (`--mount=type=bind,from=target,target=/target`): ROOT starts with its dpkg status and its
# account files (passwd, group, shadow, gshadow), so only what BASE lacks is fetched and users
# are added to BASE's own. Each package is unpacked into ROOT and recorded in ROOT's dpkg status
# and file lists, so dpkg and image scanners see it as installed. Maintainer scripts are not
# run: a Dockerfile creates the users and directories it needs itself (`useradd --prefix ROOT`).
set -eu

if [ $# -lt 4 ]; then
    echo "usage: debs.sh ARCH BASE ROOT PACKAGE..." >&2
    exit 2
fi
arch=$1 base=$2 root=$3
shift 3
if [ ! -f "$base/var/lib/dpkg/status" ]; then
    echo "debs.sh: $base has no var/lib/dpkg/status: mount the target's base image there" >&2
    exit 1
fi
status=$root/var/lib/dpkg/status
mkdir -p "$root/var/lib/dpkg" "$root/etc"
cp "$base/var/lib/dpkg/status" "$status"
for file in passwd group shadow gshadow; do
    if [ -f "$base/etc/$file" ]; then
        cp -p "$base/etc/$file" "$root/etc/$file"
    fi
done

# The package lists live in a cache mount shared by builds for the same architecture; the
# downloaded packages do not, so this run unpacks exactly what it resolved.
lists=/var/lib/apt/lists/debs-$arch
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$lists/partial" "$work/archives/partial"
target_apt() {
    apt-get -q -y --no-install-recommends \
        -o APT::Architecture="$arch" -o APT::Architectures::="$arch" \
        -o Dir::State::status="$status" -o Dir::State::Lists="$lists" \
        -o Dir::Cache="$work" -o Dir::Cache::archives="$work/archives" \
        -o Debug::NoLocking=true -o APT::Sandbox::User=root "$@"
}
target_apt update >/dev/null
target_apt install --download-only "$@" >/dev/null

mkdir -p "$root/var/lib/dpkg/info"
for deb in "$work"/archives/*.deb; do
    [ -e "$deb" ] || continue
    dpkg-deb --extract "$deb" "$root"
    name=$(dpkg-deb --show --showformat='${Package}' "$deb")
    multi=$(dpkg-deb --show --showformat='${Multi-Arch}' "$deb")
    [ "$multi" = same ] && name="$name:$arch"
    printf '\n' >>"$status"
    dpkg-deb --field "$deb" | sed '1a Status: install ok installed' >>"$status"
    dpkg-deb --fsys-tarfile "$deb" | tar -t | sed -e 's|^\./$|/.|' -e 's|^\.||' -e 's|\(.\)/$|\1|' \
        >"$root/var/lib/dpkg/info/$name.list"
    echo "debs.sh: unpacked $(basename "$deb")"
done
# Debian's /bin, /sbin and /lib are links into /usr: fold whatever a package still ships under
# the old paths into /usr, so copying ROOT onto an image never replaces those links.
for dir in bin sbin lib lib64; do
    if [ -d "$root/$dir" ] && [ ! -L "$root/$dir" ]; then
        mkdir -p "$root/usr/$dir"
        cp -a "$root/$dir/." "$root/usr/$dir/"
        rm -rf "${root:?}/$dir"
    fi
done
