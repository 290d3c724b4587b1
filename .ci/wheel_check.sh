#!/usr/bin/env bash
# The package as a user gets it: build the wheel and the sdist, check what they
# hold, install the wheel into a fresh venv in an empty folder outside the
# checkout (base dependencies only: NumPy 2, no torch), run the runtime-only
# tests there (tests/runtime_only) against a bundle that the dev venv exports,
# then add the [reference] extra to that venv and run `dcae demo`,
# `dcae-export`, a compress / decompress round trip, and check that nothing
# of the old top-level names (runtime, exporter, benchmarks, calibration) is
# importable.
#
#   .ci/wheel_check.sh [BUNDLE_OUT]
#
# Run by .ci/run after the dev venv (.venv) is installed. With BUNDLE_OUT, the
# bundle exported by the dev venv is left there (for DCAE_TEST_BUNDLE).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
DEV="$REPO/.venv/bin"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/dcae-wheel-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
EMPTY="$WORK/empty"  # the user's folder: nothing of the checkout on sys.path
mkdir -p "$EMPTY"
VENV="$WORK/venv"

STEP_START=$SECONDS
step() {  # step NAME: closes the previous step with its time
  if [ -n "${STEP_NAME:-}" ]; then echo "wheel-check: $STEP_NAME: $((SECONDS - STEP_START)) s"; fi
  STEP_NAME="$1"
  STEP_START=$SECONDS
}
quietly() {  # run a command, its output shown only when it fails
  local log="$WORK/step.log"
  if ! "$@" > "$log" 2>&1; then
    tail -n 60 "$log"
    echo "wheel-check: FAILED in '$STEP_NAME': $*" >&2
    exit 1
  fi
}

step "build the wheel and the sdist"
quietly "$DEV/python" -m build --outdir "$WORK/dist" "$REPO"
WHEEL="$(ls "$WORK"/dist/*.whl)"
SDIST="$(ls "$WORK"/dist/*.tar.gz)"

step "check their contents"
"$DEV/python" - "$WHEEL" "$SDIST" <<'EOF'
import sys, tarfile, zipfile

wheel, sdist = sys.argv[1:]
names = zipfile.ZipFile(wheel).namelist()
tops = {n.split("/")[0] for n in names}
allowed = {"dcae", "dcae_deploy"} | {t for t in tops if t.endswith(".dist-info")}
assert tops <= allowed, f"the wheel holds paths outside the packages: {sorted(tops - allowed)}"
bad = [n for n in names if "/tests/" in n or "/results/" in n or n.split("/")[0] in ("tests", "benchmarks")]
assert not bad, f"tests or results in the wheel: {bad[:10]}"
for needed in ("dcae/weights/fixture.pth.tar", "dcae_deploy/runtime/samples/kodim23_crop_384x256.png",
               "dcae_deploy/runtime/cli.py", "dcae_deploy/export/cli.py", "dcae_deploy/bench/cli.py"):
    assert needed in names, f"{needed} is not in the wheel"
entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
for script in ("dcae = dcae_deploy.runtime.cli:main", "dcae-export = dcae_deploy.export.cli:main",
               "dcae-bench = dcae_deploy.bench.cli:main"):
    assert script in entry_points, f"no console script {script!r}"
members = tarfile.open(sdist).getnames()
results = [m for m in members if "/benchmarks/" in m or "/results/" in m or "/runs/" in m]
assert not results, f"results in the sdist: {results[:10]}"
size = sum(i.file_size for i in zipfile.ZipFile(wheel).infolist())
import os
print(f"wheel-check: {os.path.basename(wheel)}: {os.path.getsize(wheel) / 2**20:.1f} MiB "
      f"({size / 2**20:.1f} MiB unpacked), {len(names)} files; sdist {len(members)} members")
EOF

step "a fresh venv with the wheel alone (base dependencies)"
python3 -m venv "$VENV"
cd "$EMPTY"
quietly "$VENV/bin/python" -m pip install --no-compile "$WHEEL" pytest
"$VENV/bin/python" - <<'EOF'
import importlib.util, sys
from pathlib import Path

import numpy

import dcae_deploy

assert numpy.__version__.split(".")[0] == "2", f"NumPy {numpy.__version__}: the runtime must run on NumPy 2"
assert importlib.util.find_spec("torch") is None, "torch is installed: the base dependencies must not bring it"
assert Path(dcae_deploy.__file__).is_relative_to(sys.prefix), f"dcae_deploy from {dcae_deploy.__file__}"
print(f"wheel-check: numpy {numpy.__version__}, no torch, dcae_deploy from the venv")
EOF

step "the dev venv exports the embedded model's bundle (dcae-export -o DIR)"
# (its portable margin is not measured: these tests need none, and the wheel's
# own dcae-export below measures one)
quietly "$DEV/dcae-export" -o "$WORK/bundle" --quiet --no-margin-measure

step "runtime-only tests in the wheel's venv (NumPy 2, no torch)"
DCAE_TEST_BUNDLE="$WORK/bundle" "$VENV/bin/python" -m pytest -q -p no:cacheprovider -c /dev/null -rs \
  --rootdir "$EMPTY" --confcutdir "$REPO/tests/runtime_only" "$REPO/tests/runtime_only" | tee "$WORK/pytest.log"
if grep -q "skipped" "$WORK/pytest.log"; then
  echo "wheel-check: runtime-only tests were skipped against the wheel" >&2
  exit 1
fi

step "pip install the wheel's [reference] extra into the same venv"
quietly "$VENV/bin/python" -m pip install --no-compile "$WHEEL[reference]"

step "dcae demo (exports the default bundle on first use)"
DCAE_CACHE="$WORK/cache" "$VENV/bin/dcae" demo -o "$EMPTY/demo" | tee "$WORK/demo.log"
grep -q "PSNR" "$WORK/demo.log"
ls "$EMPTY"/demo/*.dcae "$EMPTY"/demo/*.png > /dev/null

step "dcae-export -o DIR, then a compress / decompress round trip"
# (the demo's export above measured a portable margin with the wheel's code already)
quietly "$VENV/bin/dcae-export" -o "$EMPTY/bundle" --quiet --no-margin-measure
"$VENV/bin/dcae" compress "$REPO/tests/data/kodak/kodim23.png" -b "$EMPTY/bundle" -o "$EMPTY/kodim23.dcae"
"$VENV/bin/dcae" decompress "$EMPTY/kodim23.dcae" -b "$EMPTY/bundle" -o "$EMPTY/kodim23.png"
# and with the dev venv's bundle of the same model: the file is portable
"$VENV/bin/dcae" decompress "$EMPTY/kodim23.dcae" -b "$WORK/bundle" -o "$EMPTY/kodim23_dev.png"
"$VENV/bin/python" - "$REPO/tests/data/kodak/kodim23.png" "$EMPTY/kodim23.png" "$EMPTY/kodim23_dev.png" <<'EOF'
import sys

from dcae_deploy.runtime.imaging import load_image
from dcae_deploy.runtime.metrics import psnr

original, decoded, decoded_dev = (load_image(p) for p in sys.argv[1:])
quality = psnr(original, decoded)
assert decoded.shape == original.shape and quality > 30, (decoded.shape, quality)
assert psnr(original, decoded_dev) > 30
print(f"wheel-check: round trip kodim23 {original.shape[1]}x{original.shape[0]}: PSNR {quality:.2f} dB")
EOF

step "the old top-level names are not importable"
for name in runtime exporter benchmarks calibration tests; do
  if "$VENV/bin/python" -c "import $name" 2> /dev/null; then
    echo "wheel-check: 'import $name' works in the wheel's venv: a top-level name that collides" >&2
    exit 1
  fi
done
"$VENV/bin/python" -c "import dcae, dcae_deploy.runtime, dcae_deploy.export, dcae_deploy.calibration, dcae_deploy.bench"
"$VENV/bin/dcae-bench" --help > /dev/null

if [ $# -ge 1 ]; then
  step "keep the dev venv's bundle"
  rm -rf "$1"
  cp -r "$WORK/bundle" "$1"
fi
step ""
echo "wheel-check: passed"
