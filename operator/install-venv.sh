#!/bin/sh
# Installs a Python project and its dependencies into a new venv for a target platform
# without running anything of that platform. Both Dockerfiles call it in their build stage,
# which runs on the builder's own platform (no emulation when the image is for another one);
# the venv is then copied into the target platform's image.
#
#   install-venv.sh TARGETARCH VENV PROJECT CONSTRAINTS
#
# TARGETARCH is amd64 or arm64 (the build argument Docker and buildah set). The venv gets:
# the target's manylinux wheels for this stage's Python version and glibc (its image is the
# same Debian release as the target's), at the versions CONSTRAINTS pins; PROJECT's own wheel,
# built here; console scripts that start the venv's interpreter; and bytecode compiled here,
# which is the same on every platform. pip is not in the venv: the images only run.
set -eu
arch=$1 venv=$2 project=$3 constraints=$4

case "$arch" in
  amd64) machine=x86_64 ;;
  arm64) machine=aarch64 ;;
  *) echo "install-venv.sh: no wheels for architecture '$arch'" >&2; exit 1 ;;
esac

# pip matches --platform tags literally: name every manylinux level this glibc runs, down to
# manylinux_2_17 (manylinux2014), the oldest the pinned wheels use.
glibc_minor=$(python3 -c 'import platform; print(platform.libc_ver()[1].split(".")[1])')
set --
minor=$glibc_minor
while [ "$minor" -ge 17 ]; do
  set -- "$@" --platform "manylinux_2_${minor}_$machine"
  minor=$((minor - 1))
done
set -- "$@" --platform "manylinux2014_$machine"

tools=$(mktemp -d)
python3 -m venv "$tools/pip"
python3 -m venv --without-pip "$venv"
site=$("$venv/bin/python3" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
"$tools/pip/bin/pip" wheel --quiet --no-cache-dir --no-deps --wheel-dir "$tools/wheels" "$project"
# --python: pip runs under the venv's interpreter, so the console scripts start that one.
"$tools/pip/bin/pip" --python "$venv/bin/python3" install --quiet --no-cache-dir --no-compile \
  --only-binary=:all: "$@" --target "$site" --constraint "$constraints" "$tools"/wheels/*.whl
# --target puts the console scripts beside the packages; a venv keeps them in bin/.
mv "$site"/bin/* "$venv/bin/"
rmdir "$site/bin"
# Nothing edits an image's files, so the bytecode need not be checked against them at start.
"$venv/bin/python3" -m compileall -q --invalidation-mode unchecked-hash "$site"
rm -rf "$tools"
