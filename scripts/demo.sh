#!/usr/bin/env bash
# The demo behind `make demo`: data, a 2-rank data-parallel job on this machine, eval, predict.
# Expects the venv's bin on PATH (the Makefile does that).
set -euo pipefail
cd "$(dirname "$0")/.."

python -m trainer.prepare data
job="runs/demo-$(date +%Y%m%d-%H%M%S)"
mscluster launch cluster_configs/local_cpu.yaml --job-dir "$job"

ckpt="$(ls "$job"/checkpoints/*.ckpt | sort | tail -n 1)"
echo
echo "== evaluate the last checkpoint on the whole test split"
mscluster eval --checkpoint "$ckpt" --data-dir data
echo
echo "== predict the class of an image file"
python -m trainer.prepare data --sample-image "$job/sample.png"
mscluster predict --checkpoint "$ckpt" "$job/sample.png"
cat <<MSG

Demo done. Everything is under $job:
  checkpoints: $job/checkpoints   (last: $(basename "$ckpt"))
  logs:        $job/logs          (one file per rank, plus scheduler.log)
  tensorboard: $job/tensorboard   (tensorboard --logdir $job/tensorboard)
  result:      $job/result.json
MSG
