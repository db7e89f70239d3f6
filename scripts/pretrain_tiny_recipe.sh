#!/usr/bin/env bash
# The shipped tiny weights (molora/weights/tiny), rebuilt from nothing in four runs of
# scripts/pretrain_tiny.py, each starting from the previous one's model.safetensors
# (one thread each, seed 0; about 2.2 hours in all on one core):
#   1. text LM, conformer (CTC, then through the LM), vision through the LM, mixed  (session 3)
#   2. look-up drills, dense OCR, crops, vision through the LM, mixed              (session 5)
#   3. speech through the LM again, then mixed: step 2 trains the backbone on pages for ~10k
#      steps, after which the quickstart's WER was 38%; this brings it back (4.1%)
#   4. look-up drills again (the later phases had worn them away), speech, crops, vision, mixed,
#      with 25% drill rows and 15% speech rows kept in the crops / vision phases    (session 6)
# Usage: scripts/pretrain_tiny_recipe.sh OUT_DIR   (then copy OUT_DIR/4/* to molora/weights/tiny)
# $EXTRA is added to every run; SMOKE=1 turns every step / row count set here into 2 (the test
# suite runs the chain with EXTRA="--smoke ..." SMOKE=1).
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
    "$py" "$here/pretrain_tiny.py" --out "$out/$k" ${from:+--start-from "$out/$from/model.safetensors"} \
        --phases "$phases" "$@" "${extra[@]}"
}
run 1 "" lm,ctc,speech,vision,mixed
run 2 1 lookup,ocr,crops,vision,mixed --set "ocr_steps=$(n 3000)" --set "crops_steps=$(n 4000)"
run 3 2 speech,mixed
run 4 3 lookup,speech,crops,vision,mixed --set "lookup_steps=$(n 6000)" --set "crops_steps=$(n 3000)" \
    --set "vision_steps=$(n 3000)" --set "mixed_steps=$(n 2000)" "${keep[@]}"
