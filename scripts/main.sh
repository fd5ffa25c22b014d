#!/usr/bin/env bash
# The main job: set up, then run every notebook headless (profile $GALCORE_PROFILE, default
# "default"), two at a time with one thread each, longest first, and write executed notebooks
# (with their figures), figures, tables and results/summary.md. Extra arguments go to the
# runner (e.g. --jobs 1, --only 02).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$(bash "$root/scripts/setup.sh" | tail -n 1)"
cd "$root"
export GALCORE_PROFILE="${GALCORE_PROFILE:-default}"
unset MPLBACKEND  # the kernels use the inline backend: figures land in the executed notebooks
exec "$py" -m galcore.experiments.main.runner --profile "$GALCORE_PROFILE" "$@"
