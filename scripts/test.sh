#!/usr/bin/env bash
# The tests: set up, then pytest over the package tests and nbval over every notebook in the
# smoke profile, with the network blocked (tests: socket guard; notebook kernels: the same
# guard installed by an IPython startup file).
# With Debian's chromium at /usr/bin/chromium (.ci/run installs it), tests/test_browser.py also
# opens JupyterLab in it and runs notebook 01 (smoke) with Run All; without it, that test skips.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$(bash "$root/scripts/setup.sh" | tail -n 1)"
cd "$root"
export GALCORE_PROFILE=smoke IPYTHONDIR="$root/tests/ipython"
unset MPLBACKEND  # notebook kernels use their inline backend; pytest itself runs headless
export GALCORE_RESULTS="${GALCORE_RESULTS:-$root/results/test-run}"
exec "$py" -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider tests notebooks "$@"
