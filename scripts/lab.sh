#!/usr/bin/env bash
# Open the notebooks in JupyterLab: set up first (scripts/setup.sh: .venv with galcore[dev],
# pinned by constraints.txt), then start JupyterLab at the repository root with the file
# browser in notebooks/. The kernel ("Python 3 (ipykernel)") is the environment's own Python,
# so the notebooks import this checkout's galcore.
#   bash scripts/lab.sh                          # opens a browser tab
#   bash scripts/lab.sh --no-browser --port 8890 # extra arguments go to `jupyter lab`
#   GALCORE_PROFILE=smoke bash scripts/lab.sh    # the profile the notebooks' first cell reads
# Environment:
#   GALCORE_SKIP_SETUP=1    do not run scripts/setup.sh; use GALCORE_PYTHON (default .venv/bin/python)
#   GALCORE_PYTHON=path     the Python whose environment runs JupyterLab and the kernel (with GALCORE_SKIP_SETUP=1)
#   GALCORE_EXTRAS          passed to setup.sh (default dev; must include JupyterLab: dev or notebooks)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ "${GALCORE_SKIP_SETUP:-0}" = 1 ]; then
  py="${GALCORE_PYTHON:-$root/.venv/bin/python}"
  if [ ! -x "$py" ]; then
    echo "lab: $py is not an executable Python (set GALCORE_PYTHON, or run without GALCORE_SKIP_SETUP=1 to set up)" >&2
    exit 1
  fi
else
  py="$(bash "$root/scripts/setup.sh" | tail -n 1)"
fi
# JupyterLab, the kernel and the widgets must be in that environment (looked up, not imported: fast)
check='import importlib.util as u, sys
missing = [m for m in ("jupyterlab", "ipykernel", "ipywidgets") if u.find_spec(m) is None]
print(",".join(missing) or "-", sys.prefix)'
read -r missing prefix <<< "$("$py" -c "$check")"
if [ "$missing" != "-" ]; then
  echo "lab: $missing missing from $py's environment ($prefix); install the notebooks extra:" \
       "GALCORE_EXTRAS=dev bash scripts/setup.sh" >&2
  exit 1
fi
# the kernel runs in notebooks/, so make this checkout's galcore the one it imports
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
# the environment's scripts (jupyter, pip) first on PATH, for terminals and `!` commands
PATH="$(dirname "$py"):$PATH"
export PATH
profile="${GALCORE_PROFILE:-default}"
results="${GALCORE_RESULTS:-$root/results}/notebooks"
executed=0
if [ -d "$results" ]; then executed=$(find "$results" -maxdepth 1 -name '*.ipynb' | wc -l); fi
{
  echo "lab: Python $py (environment $prefix; the notebooks' kernel)"
  echo "lab: notebooks in $root/notebooks; profile ${profile} (GALCORE_PROFILE; each notebook's first cell, tagged 'parameters', can override it)"
  if [ "$executed" -gt 0 ]; then
    echo "lab: executed copies with outputs and figures: $results ($executed notebooks, written by scripts/main.sh)"
  else
    echo "lab: executed copies with outputs will be in $results once 'bash scripts/main.sh' has run (none there yet)"
  fi
} >&2
# JupyterLab's page config from scripts/jupyter/labconfig/page_config.json (read before the user's
# own): the news and update-check plugin is disabled, so no "get notified about Jupyter news?"
# toast on first open (--LabApp.news_url=None below only stops the fetch)
export JUPYTER_CONFIG_PATH="$root/scripts/jupyter${JUPYTER_CONFIG_PATH:+:$JUPYTER_CONFIG_PATH}"
# JupyterLab refuses to run as root (containers, CI machines) unless told it may
as_root=()
[ "$(id -u)" = 0 ] && as_root=(--allow-root)
# news and update checks off: nothing is fetched from the internet; later arguments override these
exec "$py" -m jupyterlab "${as_root[@]}" \
  --ServerApp.root_dir="$root" \
  --ContentsManager.preferred_dir=notebooks \
  --LabApp.news_url=None \
  --LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate \
  "$@"
