#!/usr/bin/env bash
# The numeric tests under kernels and modes that round differently (`make test-numerics`, not in CI):
# one and two threads, denormals flushed, and torch's, MKL's and oneDNN's kernels limited to AVX2 and to SSE4.x
# (much as another CPU changes them). Every variant must pass: a tolerance that holds on one machine
# only fails here first.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TESTS=(tests/test_equivalence.py tests/test_fast_paths.py tests/test_execution_plan.py tests/test_modalities.py tests/test_routing.py tests/test_vision.py
       tests/test_conformer.py tests/test_audio_features.py tests/test_image_transform.py tests/test_assemble.py
       tests/test_checkpoint.py tests/test_convert.py tests/test_chat.py tests/test_pinned_numbers.py
       tests/test_training.py::test_two_processes_equal_one tests/test_training.py::test_fsdp2_two_processes_equal_one_and_resume)
status=0
for variant in "default:MOLORA_TEST_THREADS=2" \
               "one-thread:MOLORA_TEST_THREADS=1" \
               "flush-denormal:MOLORA_TEST_FLUSH_DENORMAL=1" \
               "avx2:ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2" \
               "sse42:ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2 MOLORA_TEST_THREADS=1"; do
    name=${variant%%:*}; vars=${variant#*:}
    echo "== $name ($vars)"
    # shellcheck disable=SC2086
    env $vars "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}" 2>&1 | tail -4
    rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || status=1
done
exit $status
