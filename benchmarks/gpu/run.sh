#!/usr/bin/env bash
# The prepared GPU check of galcore: at most ~8 minutes on one H200, or a CPU dry run.
#
#   bash benchmarks/gpu/run.sh [--dry-run] [--parts a,b] [OUT]   # OUT defaults to benchmarks/gpu/
#   (--parts: a rerun of some parts, e.g. --parts overhead,tests; see check.py for the names)
#
# Writes OUT/record.json (keys: meta, device, torch, galcore, tests, sync_debug_errors,
# amp_fp16, overhead, seeds, notebooks; see benchmarks/gpu/README.md) and OUT/log.txt.
# --dry-run: the same code on the CPU at toy sizes, under 2 minutes (tests/test_gpu_script.py
# runs it, so scripts/test.sh keeps it working).
#
# What must travel to the device (python 3.12, torch 2.11, no network): the wheels below,
# downloaded here into benchmarks/gpu/wheels/ (git-ignored, ~14 MiB; the tracked tree ~2 MiB):
#
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 \
#     -d benchmarks/gpu/wheels $(sed -n 's/^#   wheel: //p' benchmarks/gpu/run.sh)
#
#   wheel: torch-optimizer==0.3.0 pytorch-ranger==0.1.1 mnist1d==0.0.2.post1
#   wheel: nbclient==0.11.0 nbformat==5.11.1 jupyter_client==8.10.0 jupyter_core==5.9.1
#   wheel: ipykernel==7.4.0 ipython==9.18.1 ipython_pygments_lexers==1.1.1 traitlets==5.16.1
#   wheel: comm==0.2.3 matplotlib-inline==0.2.2 nest-asyncio2==1.7.4 debugpy==1.8.22
#   wheel: fastjsonschema==2.22.3 jsonschema==4.26.0 jsonschema-specifications==2025.9.1
#   wheel: referencing==0.37.0 rpds-py==2026.9.1 pyzmq==27.3.0 tornado==6.6.1
#   wheel: decorator==5.3.1 jedi==0.20.1 parso==0.8.7 pexpect==4.9.0 ptyprocess==0.7.0
#   wheel: prompt_toolkit==3.0.53 wcwidth==0.9.4 stack-data==0.6.3 asttokens==3.0.2
#   wheel: executing==2.3.0 pure_eval==0.2.4 platformdirs==4.14.8
#
# (torch-optimizer, mnist1d: the experiments and their tests; the rest: executing notebook 02
# with nbclient. Ultralytics is not needed: its tests are left out.) The one device command
# (the device tool's `run`, carry ["benchmarks/gpu/wheels"]):
#
#   bash benchmarks/gpu/run.sh "$OUT"
#
# Wheels found in benchmarks/gpu/wheels/ are installed with `pip install --no-index --no-deps
# --target` into a temporary folder put on PYTHONPATH (nothing is installed system-wide).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dry=()
out=""
parts=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=(--dry-run) ;;
    --parts) [ $# -ge 2 ] || { echo "run.sh: --parts needs a comma-separated list" >&2; exit 2; }
             parts=(--parts "$2"); shift ;;
    -h|--help) sed -n '2,10p' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) echo "run.sh: unknown option $1 (use [--dry-run] [--parts a,b] [OUT])" >&2; exit 2 ;;
    *) [ -z "$out" ] || { echo "run.sh: one OUT folder only, got '$out' and '$1'" >&2; exit 2; }; out="$1" ;;
  esac
  shift
done
out="${out:-$root/benchmarks/gpu}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
log="$out/log.txt"
: >"$log"
say() { echo "[run.sh] $*" | tee -a "$log"; }

if [ -n "${PYTHON:-}" ]; then py="$PYTHON"
elif [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"
else py="$(command -v python3 || command -v python)"; fi
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0 GALCORE_PROGRESS=log
say "python $py; out $out; ${dry[*]:-GPU run} ${parts[*]}"

# carried wheels -> a temporary --target folder on PYTHONPATH
wheels=()
shopt -s nullglob
for w in "$root"/benchmarks/gpu/wheels/*.whl; do wheels+=("$w"); done
shopt -u nullglob
installed=""
if [ ${#wheels[@]} -gt 0 ]; then
  site="${TMPDIR:-/tmp}/galcore-gpu-site"
  if "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
       --find-links "$root/benchmarks/gpu/wheels" "${wheels[@]}" >>"$log" 2>&1; then
    export PYTHONPATH="$PYTHONPATH:$site"
    installed="$(for w in "${wheels[@]}"; do basename "$w" | cut -d- -f1; done | paste -sd, -)"
    say "installed ${#wheels[@]} wheels into $site"
  else
    say "installing the wheels FAILED (see above); going on without them"
  fi
fi

# one pip show: what is missing
pkgs=(torch torchvision numpy scipy pandas matplotlib tqdm scikit-learn pillow pyyaml pytest hypothesis lightning
      torch-optimizer mnist1d nbclient nbformat ipykernel ultralytics)
missing="$("$py" -m pip show "${pkgs[@]}" 2>&1 >/dev/null | sed -n 's/.*Package(s) not found: //p' | tr -d ' ')"
say "pip show: missing ${missing:-nothing}"
export GALCORE_GPU_MISSING="$missing" GALCORE_GPU_WHEELS="$installed"

"$py" "$root/benchmarks/gpu/check.py" --out "$out" "${dry[@]}" "${parts[@]}" 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
say "check.py exited with $rc; record: $out/record.json"
exit "$rc"
