#!/usr/bin/env bash
# Train lens-synth-demo from nothing and measure every stage (docs/demo_model.md), on a 2-core CPU.
#
#   bash recipes/demo/pipeline.sh                 # from the repository root; data/demo, outputs/demo
#   DATA=/tmp/d OUT=/tmp/o bash recipes/demo/pipeline.sh
#   INSTALL=1 bash recipes/demo/pipeline.sh       # also copy the final model to lens_model/assets/
#   python -m training.synthetic --out small --images 40 --size 112 --objects 1 6    # then a smoke test:
#   EXTRA="max_steps=2 data.eval_limit=2" SAM_EXTRA=min_eval_giou=0 ALIGN_EXTRA=min_eval_giou=0 EVAL_LIMIT=4 DOC= DATA=small OUT=/tmp/o bash ...
#
# Synthetic data -> untrained model -> [vision tower pretraining | SAM 2 box pretraining] -> SFT
# (data-parallel on both cores) -> graft -> [alignment | evaluation of SFT] -> [GRPO without | with
# the mask reward] -> evaluations -> ablation table. Steps in brackets run side by side, one thread
# each: the models are too small for a second thread per operation to pay off, and two processes
# keep both cores busy. Every training step resumes from its latest checkpoint if the script is run
# again after an interruption.
set -euo pipefail

PY=${PY:-.venv/bin/python}
DATA=${DATA:-data/demo}
OUT=${OUT:-outputs/demo}
DOC=${DOC-docs/demo_model.md}      # receives the ablation table; empty: print it only
EXTRA=${EXTRA:-}                   # key=value overrides appended to every training stage
SAM_EXTRA=${SAM_EXTRA:-}           # and to SAM 2 pretraining only (it fails below min_eval_giou: 0.5)
ALIGN_EXTRA=${ALIGN_EXTRA:-}       # and to alignment only (it fails below min_eval_giou: 0.3)
NPROC=${NPROC:-2}                  # SFT processes (data parallel)
# The test split has 6471 expressions (3.5-8 evaluated per second, by machine): the table uses its first 819; EVAL_LIMIT= for all.
EVAL_LIMIT=${EVAL_LIMIT-819}
EVAL_LIMIT=${EVAL_LIMIT:+--limit $EVAL_LIMIT}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TQDM_MININTERVAL=${TQDM_MININTERVAL:-60}  # evaluation progress once a minute, not a flood in the log
COMMON="data.root=$DATA log.progress_bar=false $EXTRA"

side_by_side() {  # run two shell commands in parallel; fail if either fails
    bash -c "$1" & local first=$!
    bash -c "$2" & local second=$!
    wait "$first"
    wait "$second"
}

evaluate() {  # evaluate MODEL_DIR on the held-out test split into MODEL_DIR/eval_test.json
    echo "$PY -m training.evaluate --model $1 --data $DATA --dataset synthetic --split test --output $1/eval_test.json --group-by expression_type $EVAL_LIMIT"
}

stamp() { echo "[$(date +%H:%M:%S)] $*"; }

stamp "1/8 synthetic scenes"
[ -f "$DATA/synthetic/instances.json" ] || $PY -m training.synthetic --out "$DATA" --images 8000 --size 112 --seed 5 --objects 1 6

stamp "2/8 untrained demo model"
[ -f "$OUT/init/config.json" ] || $PY -m recipes.demo.init_model --data "$DATA" --out "$OUT/init"

stamp "3/8 vision tower pretraining | SAM 2 box pretraining"
side_by_side \
    "$PY -m recipes.demo.vision_pretrain --config recipes/demo/configs/vision.yaml model.init=$OUT/init output_dir=$OUT/vision $COMMON" \
    "$PY -m recipes.demo.sam_pretrain --config recipes/demo/configs/sam.yaml model.init=$OUT/init output_dir=$OUT/sam $COMMON $SAM_EXTRA"

stamp "4/8 SFT ($NPROC processes)"
$PY -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m recipes.demo.sft --config recipes/demo/configs/sft.yaml \
    model.init="$OUT/vision" output_dir="$OUT/sft_reasoner" $COMMON
$PY -m recipes.demo.graft_sam --model "$OUT/sft_reasoner" --sam "$OUT/sam" --out "$OUT/sft"

stamp "5/8 alignment | evaluation of SFT"
side_by_side \
    "$PY -m training.align --config recipes/demo/configs/align.yaml model.init=$OUT/sft output_dir=$OUT/align $COMMON $ALIGN_EXTRA" \
    "$(evaluate "$OUT/sft")"

stamp "6/8 GRPO without | with the mask reward"
side_by_side \
    "$PY -m training.grpo --config recipes/demo/configs/grpo_box.yaml model.init=$OUT/align output_dir=$OUT/grpo_box $COMMON" \
    "$PY -m training.grpo --config recipes/demo/configs/grpo_mask.yaml model.init=$OUT/align output_dir=$OUT/grpo_mask $COMMON"

stamp "7/8 evaluations"
side_by_side "$(evaluate "$OUT/align")" "$(evaluate "$OUT/grpo_box")"
bash -c "$(evaluate "$OUT/grpo_mask")"

stamp "8/8 ablation table"
$PY -m recipes.demo.ablation_table \
    "SFT only=$OUT/sft/eval_test.json" \
    "+ alignment=$OUT/align/eval_test.json" \
    "+ GRPO, no mask reward=$OUT/grpo_box/eval_test.json" \
    "+ GRPO with mask reward=$OUT/grpo_mask/eval_test.json" \
    ${DOC:+--doc "$DOC"} | tee "$OUT/ablation.md"

if [ "${INSTALL:-0}" = 1 ]; then
    $PY -c "from lens_model import load_model, save_model; save_model(load_model('$OUT/grpo_box'), 'lens_model/assets/lens-synth-demo')"
    stamp "installed lens_model/assets/lens-synth-demo"
fi
stamp "done"
