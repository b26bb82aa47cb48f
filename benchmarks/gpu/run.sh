#!/usr/bin/env bash
# The benchmark suite on a lent GPU machine, from a copy of the working tree, with no network:
#   1. installs, from the carried folder benchmarks/gpu/wheels, only the distributions the
#      machine lacks (each with --no-deps; nothing already installed is replaced),
#   2. installs this project with --no-deps --no-build-isolation (editable),
#   3. prints the versions and devices,
#   4. runs `python -m benchmarks.suite --size gpu` into $OUT (results.json, results.md, logs/),
# all inside TOTAL_S seconds (default 470: the run's limit is 8 minutes, compilation included).
# SUITE_ROWS=clip,unlearn runs only those rows (a rerun).
# How to prepare the wheels and call it: benchmarks/README.md.
set -uo pipefail
cd "$(dirname "$0")/../.."
START=$(date +%s)
TOTAL_S=${TOTAL_S:-470}
OUT=${OUT:-$PWD/bench-gpu}
WORK=${WORK:-/tmp/sauce-bench-work}
WHEELS=benchmarks/gpu/wheels
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
elapsed() { echo $(( $(date +%s) - START )); }

echo "== [$(elapsed) s] wheels the machine lacks"
MISSING=$("$PY" - "$WHEELS" <<'EOF'
import sys
from importlib import metadata
from pathlib import Path

for wheel in sorted(Path(sys.argv[1]).glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        print(wheel)
        continue
    # setuptools older than 70.1 cannot build an editable wheel without the `wheel` package
    if name == "setuptools" and tuple(int(p) for p in have.split(".")[:2] if p.isdigit()) < (70, 1):
        print(wheel)
EOF
)
if [ -n "$MISSING" ]; then
    echo "$MISSING"
    # shellcheck disable=SC2086
    "$PY" -m pip install --no-deps $MISSING 2>&1 | tail -3
else
    echo "none"
fi

echo "== [$(elapsed) s] sauce-jax, editable, no dependencies"
"$PY" -m pip install --no-deps --no-build-isolation -e . 2>&1 | tail -1

echo "== [$(elapsed) s] versions"
"$PY" - <<'EOF' 2>&1 | tee "$OUT/versions.txt"
import sys
from importlib import metadata

print("python", sys.version.split()[0])
for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "torch", "transformers", "numpy",
             "pillow", "matplotlib", "sauce-jax"):
    try:
        print(name, metadata.version(name))
    except metadata.PackageNotFoundError:
        print(name, "MISSING")
try:
    import jax

    print("jax devices", jax.devices())
except Exception as exc:  # report and go on: the suite records each row's own failure
    print("jax devices: error:", exc)
try:
    import torch

    print("torch cuda", torch.cuda.is_available(), torch.version.cuda,
          torch.cuda.get_device_name() if torch.cuda.is_available() else "")
except Exception as exc:
    print("torch: error:", exc)
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/versions.txt"
git log -1 --format='commit %h %s' 2>/dev/null | tee -a "$OUT/versions.txt"

LEFT=$(( TOTAL_S - $(elapsed) ))
echo "== [$(elapsed) s] suite, --size gpu, ${LEFT} s left"
# The suite budgets its rows within --time-limit; `timeout` is the backstop for a hang.
ROWS=()
[ -n "${SUITE_ROWS:-}" ] && ROWS=(--rows "$SUITE_ROWS")  # a rerun of some rows: SUITE_ROWS=clip,unlearn
timeout -k 10 $(( LEFT - 5 )) "$PY" -m benchmarks.suite --size gpu --out "$OUT" --work "$WORK" \
    --time-limit $(( LEFT - 15 )) "${ROWS[@]}"
CODE=$?
rm -rf "$WORK"
echo "== [$(elapsed) s] done (suite exit $CODE)"
[ -f "$OUT/results.md" ] && cat "$OUT/results.md"
exit $CODE
