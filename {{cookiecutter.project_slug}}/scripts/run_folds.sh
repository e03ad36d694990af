#!/usr/bin/env bash
# Train every fold of an experiment, one fold per GPU in parallel (folds beyond the GPU count queue up on each GPU),
# then print the CV summary.
#   scripts/run_folds.sh configs/exp001.yaml [key=value ...]
#   N_GPUS=4 PY=.venv/bin/python scripts/run_folds.sh configs/exp002.yaml train.epochs=20
set -euo pipefail
CONFIG=${1:?usage: scripts/run_folds.sh CONFIG [key=value ...]}
shift
PY=${PY:-python}
PKG={{ cookiecutter.package_name }}
N_GPUS=${N_GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l || true)}
[ "${N_GPUS:-0}" -gt 0 ] || N_GPUS=1
N_FOLDS=$("$PY" -c "import sys; from $PKG.config import load; print(load(sys.argv[1], sys.argv[2:]).folds.n_folds)" "$CONFIG" "$@")
# The fold logs' folder: the experiment's (a seed bag, config key seeds: its first seed's; each fold's process trains
# that fold under every seed, and the bag's own folder holds only the blend).
EXP=$("$PY" -c "import sys; from $PKG.config import load, seed_members; print(seed_members(load(sys.argv[1], sys.argv[2:]))[0].run_dir)" "$CONFIG" "$@")
mkdir -p "$EXP"
# optim.lr=auto: run the LR finder once, before the folds start in parallel; each then reads its cached suggestion.
LR=$("$PY" -c "import sys; from $PKG.config import load; print(load(sys.argv[1], sys.argv[2:]).optim.lr)" "$CONFIG" "$@")
if [ "$LR" = auto ]; then
  "$PY" -m "$PKG" lr-find -c "$CONFIG" --fold 0 "$@"
fi

for ((gpu = 0; gpu < N_GPUS; gpu++)); do
  (
    for ((fold = gpu; fold < N_FOLDS; fold += N_GPUS)); do
      echo "fold $fold -> GPU $gpu (log: $EXP/fold$fold.log)"
      CUDA_VISIBLE_DEVICES=$gpu "$PY" -m "$PKG" train -c "$CONFIG" --fold "$fold" "$@" >"$EXP/fold$fold.log" 2>&1
    done
  ) &
done
wait
"$PY" -m "$PKG" cv -c "$CONFIG" "$@"
