#!/usr/bin/env bash
# The main job: set up, then run every notebook headless (profile $GALCORE_PROFILE, default
# "default") and write executed notebooks, figures, tables and results/summary.md.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$(bash "$root/scripts/setup.sh" | tail -n 1)"
cd "$root"
export GALCORE_PROFILE="${GALCORE_PROFILE:-default}" MPLBACKEND=Agg
exec "$py" -m galcore.experiments.notebook_runner --profile "$GALCORE_PROFILE" "$@"
