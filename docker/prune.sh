#!/bin/sh
# Drop from a family's venv what no task imports at run time (docs/images.md has the
# table and how each cut was checked). Run in the builder, before the venv is copied
# into the final stage.
#
#   prune.sh VENV FAMILY          FAMILY: light, torch or vllm
set -eu
venv=$1
family=$2
site=$(echo "$venv"/lib/python3*/site-packages)
[ -d "$site" ] || { echo "prune.sh: no site-packages under $venv" >&2; exit 2; }

# Every family: the packages' own test suites and pip itself (tasks never install
# anything: KFP's command runs `python3 -m kfp.dsl.executor_main` only).
find "$site" -type d -name tests -prune -exec rm -rf {} +
rm -rf "$site"/pip "$site"/pip-*.dist-info "$venv"/bin/pip "$venv"/bin/pip3*

case $family in
  light)
    # No setuptools at run time (nothing imports pkg_resources; the torch lock pins its
    # own for torch).
    rm -rf "$site"/setuptools "$site"/setuptools-*.dist-info "$site"/_distutils_hack \
      "$site"/distutils-precedence.pth "$site"/pkg_resources
    ;;
  torch|vllm)
    # torch's C++ test binaries, headers and protoc; torch_shm_manager stays (DataLoader
    # workers use it).
    rm -rf "$site/torch/test" "$site/torch/include" "$site/torch/share/cmake"
    find "$site/torch/bin" -type f ! -name torch_shm_manager -delete
    ;;
  *) echo "prune.sh: unknown family $family" >&2; exit 2 ;;
esac
