#!/usr/bin/env bash
# The C++ host's tests (tests/test_cpp_host.py: the round trip, the parts
# against the Python runtime, bad input, the 2600-file fuzz run) on a build
# with AddressSanitizer and UndefinedBehaviorSanitizer. Any report aborts the
# process, which fails the test that ran it; leaks are reported at exit.
#
#   hosts/cpp/sanitize.sh [pytest arguments]        (PYTHON=.venv/bin/python by default)
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=build/cpp-sanitize
cmake -S hosts/cpp -B "$BUILD" -DDCAE_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
cmake --build "$BUILD" -j"${JOBS:-2}"
# oneTBB, inside OpenVINO, dlopens its topology library with RTLD_DEEPBIND,
# which the sanitizer runtime refuses; this makes it leave the flag out.
export TBB_ENABLE_SANITIZERS=1
export ASAN_OPTIONS="abort_on_error=1:detect_leaks=1:check_initialization_order=1:strict_string_checks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export DCAE_CPP_BUILD="$BUILD"
# Left out: the dcae-bench and C interface tests load libdcae-host.so into
# Python with ctypes, and an instrumented library needs the sanitizer runtime
# loaded first.
"${PYTHON:-.venv/bin/python}" -m pytest -q tests/test_cpp_host.py -k "not dcae_bench and not c_interface" "$@"
