#!/usr/bin/env bash
# Regenerates the image's Python locks, every package pinned with its hashes:
#   containers/requirements.lock  pyproject.toml's dependencies + containers/requirements.in
#   containers/build.lock         the build backend, installed first: the package and the one dependency that
#                                 PyPI ships only as source are then built with it, not with whatever
#                                 setuptools a build-isolation environment would fetch.
# Run it after changing pyproject.toml's dependencies or containers/requirements.in (pip install uv first).
# The resolution is for the image (Linux x86_64, the Python 3.12 of Ubuntu 24.04), not for this machine, and it
# only sees releases up to EXCLUDE_NEWER, so the same inputs give the same locks on any machine.
set -euo pipefail
cd "$(dirname "$0")/.."
EXCLUDE_NEWER="${EXCLUDE_NEWER:-2026-11-30}"
compile() {
    uv pip compile "$@" --python-version 3.12 --python-platform x86_64-manylinux_2_28 \
        --generate-hashes --exclude-newer "$EXCLUDE_NEWER" --custom-compile-command "bash containers/lock.sh"
}
compile pyproject.toml containers/requirements.in --output-file containers/requirements.lock
setuptools=$(grep -oE '^setuptools==[^ ]+' containers/requirements.lock)
echo "$setuptools" | compile - --output-file containers/build.lock
