#!/usr/bin/env bash
# The tiny weights on everyday English (docs/everyday-english.md): the four runs of
# scripts/pretrain_tiny_recipe.sh, each with --corpus everyday (generated everyday sentences in the text
# phases, their espeak-ng clips in the speech phases). Run 1 builds the everyday speech corpus (20,000 clips;
# ~5 min and ~4 GB of WAV, cached under the corpora root) and learns the 6144-token tokenizer; runs 2-4 take that
# tokenizer (--tokenizer) and start from the previous run's weights.
# Expected CPU time, one thread: ~4 h in all (the shipped recipe's 2.2 h, the corpus, a 6x larger vocabulary,
# longer speech phases). An estimate: these runs have not been made yet.
# Usage: scripts/pretrain_tiny_everyday.sh OUT_DIR
#   then copy OUT_DIR/4/{model.safetensors,tokenizer.json,pretrain.json} to molora/weights/tiny, set
#   TINY_BPE_VOCAB = 6144 in molora/presets.py, and run benchmarks/bench_everyday_asr.py.
# A run whose folder holds model.safetensors and pretrain.json is finished and skipped, so after an
# interruption the same command goes on with the next run.
# $EXTRA is added to every run; SMOKE=1 turns every step / row count set here into 2 (EXTRA="--smoke" SMOKE=1).
set -euo pipefail
out=${1:?usage: $0 OUT_DIR}
py=${PYTHON:-python}
here=$(cd "$(dirname "$0")" && pwd)
export OMP_NUM_THREADS=1
extra=(${EXTRA:-})
n() { if [ -n "${SMOKE:-}" ]; then echo 2; else echo "$1"; fi; }
keep=(--set "mixed_lookup_rows=$(n 12000)" --set keep_drills=25 --set keep_speech=15)
run() {  # run K START_FROM PHASES [--set ...]
    local k=$1 from=$2 phases=$3
    shift 3
    if [ -s "$out/$k/model.safetensors" ] && [ -s "$out/$k/pretrain.json" ]; then
        echo "[pretrain_tiny_everyday] run $k is finished ($out/$k); skipped" >&2  # rerun the script to go on
        return
    fi
    "$py" "$here/pretrain_tiny.py" --out "$out/$k" --corpus everyday \
        ${from:+--start-from "$out/$from/model.safetensors" --tokenizer "$out/1/tokenizer.json"} \
        --phases "$phases" "$@" "${extra[@]}"
}
run 1 "" lm,ctc,speech,vision,mixed --set "lm_steps=$(n 3000)" --set "ctc_steps=$(n 5000)" \
    --set "speech_steps=$(n 5000)"                                                          # ~1.8 h
run 2 1 lookup,ocr,crops,vision,mixed --set "ocr_steps=$(n 3000)" --set "crops_steps=$(n 4000)"  # ~50 min
run 3 2 speech,mixed --set "speech_steps=$(n 4000)"                                         # ~35 min
run 4 3 lookup,speech,crops,vision,mixed --set "lookup_steps=$(n 6000)" --set "crops_steps=$(n 3000)" \
    --set "vision_steps=$(n 3000)" --set "mixed_steps=$(n 2000)" "${keep[@]}"               # ~50 min
