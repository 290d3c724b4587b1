#!/usr/bin/env bash
# Regenerate the checked-in benchmark results (benchmarks/results/) on this machine.
#
#   benchmarks/run_results.sh KODAK_DIR [CALIB_DIR]
#   e.g. benchmarks/run_results.sh tests/data/kodak TRAIN_DIR
#
# 1. Exports the embedded default (fixture) model at fp32, fp16 and int8 (for
#    onnxruntime with the entropy graphs fp32 and int8, and for TensorRT).
#    int8 needs CALIB_DIR (calibration images); if an int8 export fails, the
#    report says "<name>: not available (<reason>)" and everything else goes on.
# 2. dcae-bench on every image of KODAK_DIR: the PyTorch reference (with this
#    CPU's kernels and with the AVX2 and SSE4.1 ones, torch-avx2, torch-sse41) vs each runtime backend
#    x bundle, the Python runtime on onnxruntime and OpenVINO and the C++ host
#    (cpp-openvino, built first when cmake is there; backends that cannot run
#    here are listed with the reason), latency by stage, memory,
#    rate-distortion with JPEG at the same rate, the decodability matrix
#    -> $OUT/fixture/
# 3. The official-size configuration (dcae.DCAE()) at random init (seed 0,
#    update(force=True)), exported at fp32, fp16 and (with CALIB_DIR) int8 for
#    onnxruntime with the entropy graphs fp32 and int8, timed on the first 2
#    images only: speed only, since a random model's rate-distortion means
#    nothing -> $OUT/official_random_init/
# 4. (PARTS=golden, not in the default) The official configuration with the
#    golden deterministic weights (dcae_deploy.bench.random_checkpoint --golden),
#    exported fp32: dcae-bench on the first 2 images with the reference, torch-avx2,
#    onnxruntime, OpenVINO and the C++ host, for its decodability matrix
#    -> $OUT/golden/; and dcae_deploy.bench.sigma_agreement --golden on the same 2
#    images (scale errors, side-stream cost) -> $OUT/sigma_agreement_golden.md
#    (about an hour on 2 busy cores)
# 6. (PARTS=matrix, not in the default) The fixture part's decodability matrix on every
#    image of KODAK_DIR with every setup of the fixture part, no timing (dcae-bench
#    --no-speed): the decodes of the first MATRIX_PIXELS images' files compare pixels,
#    later ones read the symbols only -> $OUT/fixture_matrix/ (about 75 minutes of
#    one core for 24 images and 19 setups on an AMD EPYC, after the exports)
# 5. (PARTS=embedded, not in the default) What depends on the embedded model's weights,
#    to rerun when they change: dcae_deploy.bench.kodak_rd (the reference against JPEG at the
#    same rate) -> $OUT/kodak_rd.{json,md}; dcae_deploy.bench.int8_quality on every image
#    (with CALIB_DIR) -> $OUT/int8_quality_kodak.md; dcae-bench of the fixture bundles on
#    onnxruntime alone, no matrix, no JPEG -> $OUT/fixture_onnxruntime/ (about 40 min on
#    1 thread). The cross-machine test files are rewritten apart from this script:
#    python -m tests.portable_files write
#    and an index of every report in $OUT, $OUT/dcae-bench.md (other files in $OUT are left alone)
#
# Environment:
#   PYTHON=<repo>/.venv/bin/python when it exists, else python
#   THREADS=2      threads for every setup        REPEATS=3   timed runs per image (per round)
#   ROUNDS=1       dcae-bench --rounds: measure every setup ROUNDS times, the setups in
#                  turn, each time in a fresh process, and pool the runs
#   OUT=benchmarks/results                        WORK=<temp dir>, removed unless KEEP_WORK=1
#   BACKENDS=torch,torch-avx2,torch-sse41,torch-compile,torch-cuda,onnxruntime,onnxruntime-cuda,openvino,cpp-openvino,tensorrt
#                  (fixture part)
#   OFFICIAL_BACKENDS=torch,torch-compile,onnxruntime                   (official part)
#   PARTS=fixture,official   which parts to run (default: these two; golden and embedded
#                  on request)
#   OFFICIAL_CALIB_COUNT=8     calibration crops for the official int8 bundles
#   MATRIX_IMAGES=N  the fixture part's decodability matrix on the first N images only
#                  (dcae-bench --matrix-images; default: every image). With every backend
#                  the matrix is about 19 x 19 decodes per image, hours on 24 images on 2 cores
#   MATRIX_PIXELS=2  the matrix part's cross-decodes that synthesize pixels: those of
#                  the first N images (dcae-bench --matrix-pixels)
#   QUICK=1        a test of this script: tiny random-init models instead of the
#                  fixture and official ones, 2 images, 1 repeat, OUT defaults to
#                  /tmp/dcae-bench-quick (the checked-in results are not touched)
#
# Exit status: 0, or the first failing dcae-bench's (3: a runtime setup decoded a
# file wrongly without an error; 4: a setup's speed could not be measured; 5: a
# portable file was refused by another setup that writes portable files; the
# report is written and says so).
set -euo pipefail

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 2; }
[ $# -ge 1 ] || usage
case "$1" in -h|--help) usage ;; esac

REPO="$(cd "$(dirname "$0")/.." && pwd)"
KODAK_ARG="$1"; CALIB_ARG="${2:-${CALIB:-}}"  # as given, for the command lines in the results
KODAK="$(cd "$1" && pwd)"
CALIB="$CALIB_ARG"
[ -z "$CALIB" ] || CALIB="$(cd "$CALIB" && pwd)"
QUICK="${QUICK:-0}"
THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-1}"
# The project's virtual environment (README's set-up) when there is one.
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python; fi
fi
if ! "$PYTHON" -c 'import runtime, exporter, benchmarks' 2> /dev/null; then
    echo "run_results: $PYTHON cannot import the project (install it as the README says, or set PYTHON)" >&2
    exit 2
fi
if [ "$QUICK" = 1 ]; then
    OUT="${OUT:-/tmp/dcae-bench-quick}"; REPEATS="${REPEATS:-1}"; LIMIT=(--limit 2)
else
    OUT="${OUT:-$REPO/benchmarks/results}"; REPEATS="${REPEATS:-3}"; LIMIT=()
fi
BACKENDS="${BACKENDS:-torch,torch-avx2,torch-sse41,torch-compile,torch-cuda,onnxruntime,onnxruntime-cuda,openvino,cpp-openvino,tensorrt}"
OFFICIAL_BACKENDS="${OFFICIAL_BACKENDS:-torch,torch-compile,onnxruntime}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="${WORK:-$(mktemp -d -t dcae-bench-work.XXXXXX)}"
mkdir -p "$WORK"
[ "${KEEP_WORK:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
cd "$REPO"
say() { echo "[run_results] $*" >&2; }
# Result files name the paths as they were given (KODAK_DIR, CALIB_DIR) or within the
# repository, not where this machine keeps them or this run's temporary folder.
given_paths() {
    local file
    for file in "$@"; do
        [ -f "$file" ] || continue
        sed -i -e "s|$WORK/||g" -e "s|$KODAK|$KODAK_ARG|g" ${CALIB:+-e "s|$CALIB|$CALIB_ARG|g"} \
            -e "s|$REPO/||g" "$file"
    done
}

# ---- the models ---------------------------------------------------------------------
if [ "$QUICK" = 1 ]; then
    "$PYTHON" -m dcae_deploy.bench.random_checkpoint --preset tiny --seed 0 -o "$WORK/fixture.pth.tar"
    FIXTURE_CKPT=("$WORK/fixture.pth.tar")  # dcae-export's positional checkpoint
    BENCH_CKPT=(--checkpoint "$WORK/fixture.pth.tar")
    OFFICIAL_PRESET=tiny
    CALIB_OPTS=(--calib-count 2 --calib-holdout 1)
    QUALITY_OPTS=(--calib-count 2)
else
    FIXTURE_CKPT=()  # dcae-export's and dcae-bench's default: the embedded model
    BENCH_CKPT=()
    OFFICIAL_PRESET=dcae
    CALIB_OPTS=()
    QUALITY_OPTS=()
fi

export_bundle() {  # export_bundle OUT_DIR [dcae-export options...]
    local dir="$1"; shift
    say "dcae-export -o $dir $*"
    "$PYTHON" -m dcae_deploy.export.cli "$@" -o "$dir" --threads "$THREADS" --quiet
}

PARTS="${PARTS:-fixture,official}"
status=0
keep_status() { [ $status -ne 0 ] || status=$1; }  # the exit status is the first failure's
NOTES=()

# The C++ host for cpp-openvino: configured once, then an incremental build (a
# no-op when it is current). Without cmake or when the build fails, dcae-bench
# lists cpp-openvino as not available, with the reason.
build_cpp_host() {
    command -v cmake > /dev/null || { say "cmake not found: cpp-openvino will be listed as not available"; return 0; }
    local build="$REPO/build/cpp" openvino_cmake configure=(cmake -S hosts/cpp -B "$REPO/build/cpp")
    # OpenVINO's CMake package from the wheel of the Python this script runs
    openvino_cmake="$("$PYTHON" -c 'import openvino, os
print(os.path.join(os.path.dirname(openvino.__file__), "cmake"))' 2> /dev/null || true)"
    [ -z "$openvino_cmake" ] || configure+=(-DOpenVINO_DIR="$openvino_cmake")
    say "building the C++ host in $build"
    if { [ -f "$build/CMakeCache.txt" ] || "${configure[@]}" > "$WORK/cpp_build.log" 2>&1; } &&
            cmake --build "$build" -j"$THREADS" >> "$WORK/cpp_build.log" 2>&1; then
        return 0
    fi
    reason="$(grep -v '^\s*$' "$WORK/cpp_build.log" | tail -n 1 | cut -c1-300)"
    say "C++ host build failed: $reason"
    NOTES+=(--note "cpp-openvino: the C++ host did not build here: ${reason:-no message}")
}
if { [[ ",$PARTS," =~ ,(fixture|matrix), ]] && [[ ",$BACKENDS," == *",cpp-openvino,"* ]]; } ||
        [[ ",$PARTS," == *",golden,"* ]]; then
    build_cpp_host
fi
if [[ ",$PARTS," =~ ,(fixture|matrix|embedded), ]]; then
# ---- 1. fixture bundles ---------------------------------------------------------------
FIXTURE_BUNDLES=()
for precision in fp32 fp16; do
    export_bundle "$WORK/fixture/$precision" ${FIXTURE_CKPT[@]+"${FIXTURE_CKPT[@]}"} --precision "$precision"
    FIXTURE_BUNDLES+=(--bundle "$WORK/fixture/$precision")
done
# int8 bundles: for onnxruntime (the default form) with the entropy graphs fp32
# and int8, and for TensorRT (which onnxruntime runs as float kernels)
INT8_VARIANTS=("int8 --entropy-precision fp32" "int8_entropy_int8 --entropy-precision same"
               "int8_tensorrt --int8-target tensorrt")
if [ -z "$CALIB" ]; then
    NOTES+=(--note "int8: not available (no calibration images given: pass CALIB_DIR)")
else
    mkdir -p "$WORK/calib_cache"
    for variant in "${INT8_VARIANTS[@]}"; do
        read -r name options <<< "$variant"
        # shellcheck disable=SC2086  # options are words
        if export_bundle "$WORK/fixture/$name" ${FIXTURE_CKPT[@]+"${FIXTURE_CKPT[@]}"} --precision int8 $options \
                --calib "$CALIB" --calib-cache "$WORK/calib_cache" ${CALIB_OPTS[@]+"${CALIB_OPTS[@]}"} \
                2> "$WORK/int8.log"; then
            FIXTURE_BUNDLES+=(--bundle "$WORK/fixture/$name")
        else
            reason="$(grep -v '^\s*$' "$WORK/int8.log" | tail -n 1 | cut -c1-300)"
            say "$name export failed: $reason"
            NOTES+=(--note "$name: not available (dcae-export --precision int8 $options failed: ${reason:-no message})")
        fi
    done
fi

fi
# ---- 2. fixture benchmark -------------------------------------------------------------
if [[ ",$PARTS," == *",fixture,"* ]]; then
say "dcae-bench: fixture bundles on $KODAK"
"$PYTHON" -m dcae_deploy.bench.cli "${FIXTURE_BUNDLES[@]}" --images "$KODAK" ${LIMIT[@]+"${LIMIT[@]}"} \
    ${BENCH_CKPT[@]+"${BENCH_CKPT[@]}"} --backends "$BACKENDS" \
    --threads "$THREADS" --repeats "$REPEATS" --rounds "$ROUNDS" ${NOTES[@]+"${NOTES[@]}"} \
    ${MATRIX_IMAGES:+--matrix-images "$MATRIX_IMAGES"} \
    --out "$OUT/fixture" --files "$WORK/files/fixture" || keep_status $?
given_paths "$OUT/fixture/report.md" "$OUT/fixture/report.json"
fi

# ---- 6. the fixture bundles' decodability matrix on every image, no timing -------------
if [[ ",$PARTS," == *",matrix,"* ]]; then
say "dcae-bench: decodability matrix of the fixture bundles on every image of $KODAK"
"$PYTHON" -m dcae_deploy.bench.cli "${FIXTURE_BUNDLES[@]}" --images "$KODAK" ${LIMIT[@]+"${LIMIT[@]}"} \
    ${BENCH_CKPT[@]+"${BENCH_CKPT[@]}"} --backends "$BACKENDS" --threads "$THREADS" ${NOTES[@]+"${NOTES[@]}"} \
    --no-speed --matrix-pixels "${MATRIX_PIXELS:-2}" \
    --out "$OUT/fixture_matrix" --files "$WORK/files/fixture_matrix" || keep_status $?
given_paths "$OUT/fixture_matrix/report.md" "$OUT/fixture_matrix/report.json"
fi

# ---- 5. results that depend on the embedded model's weights ---------------------------
if [[ ",$PARTS," == *",embedded,"* ]]; then
say "kodak_rd: the embedded model (PyTorch reference) against JPEG at the same rate"
"$PYTHON" -m dcae_deploy.bench.kodak_rd --images "$KODAK" ${LIMIT[@]+"${LIMIT[@]}"} ${BENCH_CKPT[@]+"${BENCH_CKPT[@]}"} \
    --threads "$THREADS" --out "$OUT" || keep_status $?
given_paths "$OUT/kodak_rd.md" "$OUT/kodak_rd.json"
if [ -n "$CALIB" ]; then
    count="$([ "$QUICK" = 1 ] && echo 2 || find "$KODAK" -maxdepth 1 -iname '*.png' | wc -l)"  # int8_quality reads PNGs
    quality_command="python -m dcae_deploy.bench.int8_quality --calib $CALIB_ARG --images $KODAK_ARG --count $count --threads $THREADS"
    say "int8_quality: the default int8 bundle against fp32 on $count images"
    if "$PYTHON" -m dcae_deploy.bench.int8_quality --calib "$CALIB" --images "$KODAK" --count "$count" \
            ${BENCH_CKPT[@]+"${BENCH_CKPT[@]}"} ${QUALITY_OPTS[@]+"${QUALITY_OPTS[@]}"} --threads "$THREADS" \
            --work "$WORK/int8_quality" > "$WORK/int8_quality.txt"; then
        {
            echo "# INT8 quality: the default int8 bundle against fp32"
            echo
            echo "Command: \`$quality_command\` (run by \`benchmarks/run_results.sh\`, PARTS=embedded)"
            echo
            echo "CPU: $("$PYTHON" -c 'from dcae_deploy.bench.machine import cpu_description; print(cpu_description())'); threads: $THREADS; onnxruntime CPU"
            echo
            echo '```'
            sed "s|$WORK/||g" "$WORK/int8_quality.txt"
            echo '```'
        } > "$OUT/int8_quality_kodak.md"
    else
        keep_status $?
    fi
fi
say "dcae-bench: fixture bundles on onnxruntime alone"
"$PYTHON" -m dcae_deploy.bench.cli "${FIXTURE_BUNDLES[@]}" --images "$KODAK" ${LIMIT[@]+"${LIMIT[@]}"} \
    ${BENCH_CKPT[@]+"${BENCH_CKPT[@]}"} --backends onnxruntime --no-matrix --no-jpeg \
    --threads "$THREADS" --repeats "$REPEATS" --rounds "$ROUNDS" ${NOTES[@]+"${NOTES[@]}"} \
    --out "$OUT/fixture_onnxruntime" --files "$WORK/files/fixture_onnxruntime" || keep_status $?
given_paths "$OUT/fixture_onnxruntime/report.md" "$OUT/fixture_onnxruntime/report.json"
fi

# ---- 3. official-size configuration at random init, speed only ------------------------
if [[ ",$PARTS," == *",official,"* ]]; then
"$PYTHON" -m dcae_deploy.bench.random_checkpoint --preset "$OFFICIAL_PRESET" --seed 0 -o "$WORK/official.pth.tar"
OFFICIAL_BUNDLES=()
for precision in fp32 fp16; do
    export_bundle "$WORK/official/$precision" "$WORK/official.pth.tar" --precision "$precision"
    OFFICIAL_BUNDLES+=(--bundle "$WORK/official/$precision")
done
OFFICIAL_NOTE="official-size configuration ($OFFICIAL_PRESET) at random init (seed 0): speed only"
if [ -n "$CALIB" ]; then
    mkdir -p "$WORK/calib_cache"
    for entropy in fp32 same; do
        name=int8_entropy_$([ $entropy = same ] && echo int8 || echo fp32)
        export_bundle "$WORK/official/$name" "$WORK/official.pth.tar" --precision int8 --entropy-precision $entropy \
            --calib "$CALIB" --calib-count "${OFFICIAL_CALIB_COUNT:-8}" --calib-holdout 2 \
            --calib-cache "$WORK/calib_cache" && OFFICIAL_BUNDLES+=(--bundle "$WORK/official/$name")
    done
    OFFICIAL_NOTE="$OFFICIAL_NOTE; int8 for onnxruntime calibrated on ${OFFICIAL_CALIB_COUNT:-8} crops"
fi
say "dcae-bench: official-size configuration (random init), speed only, 2 images"
"$PYTHON" -m dcae_deploy.bench.cli "${OFFICIAL_BUNDLES[@]}" \
    --checkpoint "$WORK/official.pth.tar" --images "$KODAK" --limit 2 --speed-only \
    --backends "$OFFICIAL_BACKENDS" --threads "$THREADS" --repeats "$REPEATS" --rounds "$ROUNDS" --note "$OFFICIAL_NOTE" \
    --out "$OUT/official_random_init" --files "$WORK/files/official" || keep_status $?
given_paths "$OUT/official_random_init/report.md" "$OUT/official_random_init/report.json"
fi

# ---- 4. official configuration, golden weights: the decodability matrix --------------
if [[ ",$PARTS," == *",golden,"* ]]; then
if [ "$QUICK" = 1 ]; then
    "$PYTHON" -m dcae_deploy.bench.random_checkpoint --preset tiny --seed 0 -o "$WORK/golden.pth.tar"
    SIGMA_MODEL=(--checkpoint "$WORK/golden.pth.tar")
else
    "$PYTHON" -m dcae_deploy.bench.random_checkpoint --golden -o "$WORK/golden.pth.tar"
    SIGMA_MODEL=(--golden)
fi
export_bundle "$WORK/golden/fp32" "$WORK/golden.pth.tar" --precision fp32
GOLDEN_NOTE="official configuration (dcae, 119 M parameters) with the golden deterministic weights (seed 0,"
GOLDEN_NOTE="$GOLDEN_NOTE tests/data/golden): not trained, so rate-distortion means nothing; this run is for"
GOLDEN_NOTE="$GOLDEN_NOTE its decodability matrix"
[ "$QUICK" != 1 ] || GOLDEN_NOTE="QUICK=1: a tiny random-init model in place of the golden official one"
say "dcae-bench: official configuration, golden weights, decodability matrix, 2 images"
"$PYTHON" -m dcae_deploy.bench.cli --bundle "$WORK/golden/fp32" --checkpoint "$WORK/golden.pth.tar" --images "$KODAK" \
    --limit 2 --backends torch,torch-avx2,torch-sse41,onnxruntime,openvino,cpp-openvino --threads "$THREADS" --repeats 1 \
    --note "$GOLDEN_NOTE" ${NOTES[@]+"${NOTES[@]}"} --out "$OUT/golden" --files "$WORK/files/golden" ||
    keep_status $?
given_paths "$OUT/golden/report.md" "$OUT/golden/report.json"
say "sigma_agreement: official configuration, golden weights, 2 images"
"$PYTHON" -m dcae_deploy.bench.sigma_agreement "${SIGMA_MODEL[@]}" --limit 2 --images "$KODAK" \
    --bundle "$WORK/golden/fp32" --backend onnxruntime --backend openvino --threads 1 --out "$OUT" ||
    keep_status $?
given_paths "$OUT/sigma_agreement_golden.md" "$OUT/sigma_agreement_golden.json"
fi

# The index: every report in $OUT, with the date and CPU it states, whichever
# parts this run regenerated.
describe_part() {
    case "$1" in
        fixture) echo "torch vs each runtime backend x bundle, embedded model: latency by stage, memory," \
                      "rate-distortion with JPEG at the same rate, decodability matrix" ;;
        fixture_matrix) echo "the decodability matrix of every setup of the fixture part on every image, no" \
                             "timing (PARTS=matrix)" ;;
        fixture_onnxruntime) echo "every bundle form of the embedded model on onnxruntime alone (PARTS=embedded)" ;;
        official_random_init) echo "the official-size configuration at random init, speed only" ;;
        golden) echo "the official configuration with the golden weights on 2 images: the decodability matrix" \
                     "of the reference (two CPU kernel families), onnxruntime, OpenVINO and the C++ host (PARTS=golden)" ;;
        official_compile) echo "the official configuration against torch.compile (not run by this script:" \
                               "docs/performance-compile.md)" ;;
        cpp_host) echo "the C++ host against the Python runtime (not run by this script: docs/cpp-host.md)" ;;
        *) echo "a dcae-bench report" ;;
    esac
}
{
    echo "# dcae-bench results"
    echo
    echo "Each report states its command, date, machine, timed runs and rounds; \`benchmarks/run_results.sh\`"
    echo "last ran here on $(date -u +%Y-%m-%d) with PARTS=$PARTS, THREADS=$THREADS${MATRIX_IMAGES:+, MATRIX_IMAGES=$MATRIX_IMAGES}$([ "$QUICK" = 1 ] && printf ', QUICK=1 (tiny random-init models)')."
    echo
    for report in "$OUT"/*/report.md; do
        [ -f "$report" ] || continue
        part="$(basename "$(dirname "$report")")"
        run="$(sed -n 's/^Run: \([0-9-]*\).*/\1/p' "$report" | head -n 1)"
        cpu="$(sed -n 's/^- CPU: \([^;]*\).*/\1/p' "$report" | head -n 1)"
        echo "- [$part/report.md]($part/report.md) (${run:-undated}, ${cpu:-CPU not stated}): $(describe_part "$part")"
    done
    echo
    echo "Rerun: \`benchmarks/run_results.sh KODAK_DIR [CALIB_DIR]\` (see the script's header)."
} > "$OUT/dcae-bench.md"
say "results in $OUT (exit status $status)"
exit $status
