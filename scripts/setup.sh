#!/usr/bin/env bash
# Create (or reuse) the project's Python environment and install galcore with its extras.
# Uses the active virtual environment (or activated conda environment) if there is one, else
# .venv at the repository root.
# Versions are pinned by constraints.txt (the exact set the test suite last passed with).
# Prints the path of the Python to use on its last line.
#   GALCORE_EXTRAS=dev (default) | notebooks | experiments | yolo | "" (the core alone)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
extras="${GALCORE_EXTRAS-dev}"
if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
  py="$VIRTUAL_ENV/bin/python"
elif [ -n "${CONDA_PREFIX:-}" ] && [ "${CONDA_DEFAULT_ENV:-base}" != base ] && [ -x "$CONDA_PREFIX/bin/python" ]; then
  py="$CONDA_PREFIX/bin/python"  # an activated conda environment (environment.yml)
else
  if [ ! -x .venv/bin/python ]; then
    base="$(command -v python3.11 || command -v python3)"
    echo "setup: creating .venv with $("$base" --version)" >&2
    "$base" -m venv .venv
  fi
  py="$root/.venv/bin/python"
fi
target="."
[ -n "$extras" ] && target=".[$extras]"
# reinstall only when the dependency list, the pins or the extras changed
stamp="$("$py" -c 'import sys; print(sys.prefix)')/.galcore-setup"
want="$({ cat pyproject.toml; cat constraints.txt 2>/dev/null || true; } | sha256sum | cut -d' ' -f1) $extras"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$py" -c 'import galcore' 2>/dev/null; then
  echo "setup: installing galcore$([ -n "$extras" ] && echo "[$extras]") pinned by constraints.txt (a few minutes the first time)" >&2
  "$py" -m pip install --quiet --upgrade pip >&2
  pins=()
  [ -f constraints.txt ] && pins=(-c constraints.txt)
  "$py" -m pip install --quiet "${pins[@]}" -e "$target" >&2
  echo "$want" > "$stamp"
fi
echo "$py"
