#!/usr/bin/env bash
# Build the base image offline: Debian bookworm (minbase) + Python 3.11 with venv support,
# made with debootstrap from the machine's Debian mirror and imported as an image. The
# family Dockerfiles build FROM it (ARG BASE_IMAGE); online users can skip it and pass
# --build-arg BASE_IMAGE=python:3.11-slim instead.
#
#   docker/base/build.sh [TAG]      default TAG: optimus-base:bookworm (components/images.py)
#
# Environment: ENGINE=docker|buildah (default: docker when a daemon answers, else buildah),
# DEBIAN_MIRROR (default: the first URIs line of /etc/apt/sources.list.d/*.sources, or
# /etc/apt/sources.list), SUITE (default bookworm). Needs root (debootstrap).
# Shipped inside the image: /etc/apt/sources.list names deb.debian.org (the mirror used to
# build is not written into the image), no apt lists or caches, no docs, man pages or
# locales other than C.
set -euo pipefail

TAG=${1:-optimus-base:bookworm}
SUITE=${SUITE:-bookworm}

die() { echo "docker/base/build.sh: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "debootstrap needs root"
command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install -y --no-install-recommends debootstrap"

if [[ -z ${ENGINE:-} ]]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker
  elif command -v buildah >/dev/null; then ENGINE=buildah
  else die "neither a docker daemon nor buildah is available"; fi
fi

if [[ -z ${DEBIAN_MIRROR:-} ]]; then
  DEBIAN_MIRROR=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 || true)
  if [[ -z $DEBIAN_MIRROR ]]; then
    DEBIAN_MIRROR=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  fi
  [[ -n $DEBIAN_MIRROR ]] || die "no Debian mirror found in the apt sources: set DEBIAN_MIRROR"
fi

work=$(mktemp -d /tmp/optimus-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs

echo "==> debootstrap $SUITE (minbase + python3, python3-venv, ca-certificates)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$SUITE" "$rootfs" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }

echo "==> slimming the root file system"
cat >"$rootfs/etc/apt/sources.list" <<EOF
deb http://deb.debian.org/debian $SUITE main
deb http://deb.debian.org/debian $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
EOF
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
  "$rootfs"/var/log/* "$rootfs"/tmp/* "$rootfs"/root/.cache \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
  "$rootfs"/usr/share/locale/* "$rootfs"/usr/share/lintian
# Python's own test suite is not needed (its bytecode caches are kept: a non-root task
# could not write them, and would compile the standard library at every start).
rm -rf "$rootfs"/usr/lib/python3.*/test
# Keep dpkg from restoring the removed docs if a derived image installs packages.
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/01-optimus-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
chroot "$rootfs" python3 -c "import sys, venv, ensurepip; assert sys.version_info[:2] == (3, 11)" \
  || die "the root file system has no working Python 3.11 with venv"

tar -C "$rootfs" --numeric-owner -cf "$work/rootfs.tar" .
changes=(
  --change 'ENV LANG=C.UTF-8'
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  --change 'CMD ["python3"]'
)
echo "==> importing as $TAG ($ENGINE)"
if [[ $ENGINE == docker ]]; then
  docker import "${changes[@]}" "$work/rootfs.tar" "$TAG" >/dev/null
  docker image inspect -f '{{.Size}}' "$TAG" | awk -v t="$TAG" '{printf "==> %s: %.0f MB\n", t, $1 / 1e6}'
else
  B=(buildah --storage-driver "${BUILDAH_STORAGE_DRIVER:-vfs}")
  ctr=$("${B[@]}" from scratch)
  "${B[@]}" add "$ctr" "$work/rootfs.tar" / >/dev/null
  "${B[@]}" config --env LANG=C.UTF-8 \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd python3 "$ctr"
  "${B[@]}" commit --rm "$ctr" "$TAG" >/dev/null
  echo "==> $TAG imported into buildah's storage"
fi
