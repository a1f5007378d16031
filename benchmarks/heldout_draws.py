"""Held-out MLM accuracy of a finished run over several pairing/mask draws.

    python benchmarks/heldout_draws.py RUN_DIR CORPUS [--draws 4]

A run evaluates one draw of NSP pairs and masks of its held-out corpus
(seed + 1). On the 600-step learning benchmark the whole WikiText-2 test set
scored 0.105-0.109 across draws for the *same* model, wider than the gaps
between the variants we compared, so this script reports every draw over the
whole corpus and their mean. It reuses the run's tokenizer and data config.
"""

import argparse
import dataclasses
import json
import os
import statistics

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("corpus", help="held-out corpus (file or folder)")
    parser.add_argument("--draws", type=int, default=4)
    args = parser.parse_args()

    from kerasbert.config import DataConfig
    from kerasbert.data.corpus import prepare_corpus
    from kerasbert.data.pretraining import pretraining_dataset
    from kerasbert.serving.modeldir import load_model

    with open(os.path.join(args.run_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    data_cfg = DataConfig.from_dict(config["data"])
    data_cfg = dataclasses.replace(
        data_cfg,
        corpus=args.corpus,
        heldout_corpus=None,
        tokenizer=os.path.join(args.run_dir, "tokenizer"),
    )
    tokenizer, corpus = prepare_corpus(data_cfg, progress=False)
    model = load_model(args.run_dir)
    scores = []
    for draw in range(1, args.draws + 1):
        ds = pretraining_dataset(
            corpus,
            tokenizer,
            sequence_length=data_cfg.sequence_length,
            batch_size=config["train"]["batch_size"],
            max_predictions=data_cfg.max_predictions,
            mask_rate=data_cfg.mask_rate,
            whole_word=data_cfg.whole_word,
            nsp_probability=data_cfg.nsp_probability,
            short_seq_prob=data_cfg.short_seq_prob,
            seed=config["train"]["seed"] + draw,
            repeat=False,
        )
        result = model.evaluate(ds, verbose=0, return_dict=True)
        scores.append(result["mlm_accuracy"])
        print(
            f"draw {draw} (seed {config['train']['seed'] + draw}): "
            f"MLM accuracy {result['mlm_accuracy']:.4f}, "
            f"MLM loss {result['mlm_loss']:.4f}",
            flush=True,
        )
    print(f"mean over {len(scores)} draws: {statistics.mean(scores):.4f}")


if __name__ == "__main__":
    main()
