#!/usr/bin/env bash
# The shipped tiny weights (molora/weights/tiny), rebuilt from nothing in three runs of
# scripts/pretrain_tiny.py, each starting from the previous one's model.safetensors
# (one thread each, seed 0; about 90 minutes in all on one core):
#   1. text LM, conformer (CTC, then through the LM), vision through the LM, mixed  (session 3)
#   2. look-up drills, dense OCR, crops, vision through the LM, mixed              (session 5)
#   3. speech through the LM again, then mixed: step 2 trains the backbone on pages for ~10k
#      steps, after which the quickstart's WER was 38%; this brings it back (4.1%)
# Usage: scripts/pretrain_tiny_recipe.sh OUT_DIR   (then copy OUT_DIR/3/* to molora/weights/tiny)
# $EXTRA is added to every run and $OCR_STEPS / $CROPS_STEPS override run 2's step counts (the test
# suite runs the chain with EXTRA="--smoke ..." OCR_STEPS=2 CROPS_STEPS=2).
set -euo pipefail
out=${1:?usage: $0 OUT_DIR}
py=${PYTHON:-python}
here=$(cd "$(dirname "$0")" && pwd)
export OMP_NUM_THREADS=1
extra=(${EXTRA:-})
"$py" "$here/pretrain_tiny.py" --out "$out/1" --phases lm,ctc,speech,vision,mixed "${extra[@]}"
"$py" "$here/pretrain_tiny.py" --out "$out/2" --start-from "$out/1/model.safetensors" \
    --phases lookup,ocr,crops,vision,mixed --set "ocr_steps=${OCR_STEPS:-3000}" \
    --set "crops_steps=${CROPS_STEPS:-4000}" "${extra[@]}"
"$py" "$here/pretrain_tiny.py" --out "$out/3" --start-from "$out/2/model.safetensors" --phases speech,mixed \
    "${extra[@]}"
