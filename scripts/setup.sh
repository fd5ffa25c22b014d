#!/usr/bin/env bash
# Create (or reuse) the project's Python environment and install galcore with its extras.
# Uses the active virtual environment if there is one, else .venv at the repository root.
# Prints the path of the Python to use on its last line.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
  py="$VIRTUAL_ENV/bin/python"
else
  if [ ! -x .venv/bin/python ]; then
    base="$(command -v python3.11 || command -v python3)"
    echo "setup: creating .venv with $("$base" --version)" >&2
    "$base" -m venv .venv
  fi
  py="$root/.venv/bin/python"
fi
# reinstall only when the dependency list changed
stamp="$("$py" -c 'import sys; print(sys.prefix)')/.galcore-setup"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$py" -c 'import galcore' 2>/dev/null; then
  echo "setup: installing galcore[dev] (torch, torchvision, ultralytics, ...; a few minutes the first time)" >&2
  "$py" -m pip install --quiet --upgrade pip >&2
  "$py" -m pip install --quiet -e ".[dev]" >&2
  echo "$want" > "$stamp"
fi
echo "$py"
