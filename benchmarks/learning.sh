#!/usr/bin/env bash
# Learning benchmark, same recipe as the HF reference run (see docs/benchmarks.md):
# bert-base-uncased vocab, train on WikiText-2 valid, evaluate on WikiText-2
# test, mini size, sequence 128, batch 32, 600 steps, peak LR 5e-4 with 10%
# warm-up and linear decay, clipping 1.0. Needs ../shared. Each epoch's end
# evaluates the first 20 held-out batches; the final evaluation (summary.json)
# covers the whole test set (about 80 batches; 1000 is a cap).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/data
python -m kerasbert.fit --size mini \
  --corpus "$DATA/wikitext-2-raw-v1/wiki.valid.raw" \
  --heldout-corpus "$DATA/wikitext-2-raw-v1/wiki.test.raw" \
  --tokenizer "$DATA/bert_vocab/bert-base-uncased-vocab.txt" \
  --sequence-length 128 --batch-size 32 --max-steps 600 \
  --learning-rate 5e-4 --warmup-ratio 0.1 --clipnorm 1.0 \
  --eval-batches 20 --final-eval-batches 1000 --output-dir runs/bench-learning --overwrite "$@"
