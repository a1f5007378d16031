"""Corpus preparation at scale: MB/s and peak memory of `prepare_corpus`.

    python benchmarks/corpus_prep.py [--sizes 10,100,1000] [--workdir DIR]
        [--tokenizer PATH] [--train-vocab] [--keep]

Builds plain-text corpora of the given sizes (MB) from the English texts at
hand -- the bundled WikiText-2 sample, ../shared's WikiText-2 test split and
NLTK movie_reviews -- repeated until the size is reached (the sources hold
about 10 MB, so larger corpora repeat them: the splitter and tokenizer do
the same work per byte, though the tokenizer's word cache hits more often
than on fresh text). Each size is then read, cleaned, split into sentences,
tokenized and cached by `kerasbert.data.corpus.prepare_corpus` in a fresh
process, with the bert-base-uncased vocabulary by default (`--train-vocab`
trains an 8,000-piece WordPiece first, as `fit` does without --tokenizer).
Prints MB/s of raw text, the peak resident memory of the main process and
of its largest worker, and the time a 20 GB dump would take at the largest
size's rate. The corpora and caches are deleted afterwards unless --keep.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's kerasbert, installed or not
SHARED = os.path.join(ROOT, "..", "shared", "data")
VOCAB = os.path.join(SHARED, "bert_vocab", "bert-base-uncased-vocab.txt")


def source_documents():
    """Documents (lists of paragraphs) of every English source at hand."""
    from kerasbert.text import readers

    docs = list(readers.read_wikitext(readers.BUNDLED_CORPUS))
    test = os.path.join(SHARED, "wikitext-2-raw-v1", "wiki.test.raw")
    if os.path.exists(test):
        docs += list(readers.read_wikitext(test))
    reviews = os.path.join(SHARED, "nltk_data", "corpora", "movie_reviews.zip")
    if os.path.exists(reviews):
        with zipfile.ZipFile(reviews) as z:
            for name in sorted(z.namelist()):
                if name.endswith(".txt"):
                    text = z.read(name).decode("utf-8", "replace")
                    lines = [t.strip() for t in text.splitlines()]
                    docs.append([t for t in lines if t])
    return [d for d in docs if d]


def build_corpus(path, megabytes, docs):
    """Plain text, a blank line between documents, `megabytes` long."""
    target = int(megabytes * 1e6)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            for doc in docs:
                block = "\n".join(doc) + "\n\n"
                f.write(block)
                written += len(block.encode("utf-8"))
                if written >= target:
                    break
    return os.path.getsize(path)


def prepare_once(corpus, cache_dir, tokenizer):
    """Runs in a fresh process: prepare_corpus, timed, peak RSS."""
    import platform

    # Importing TensorFlow (the fast tokenizer's) runs `uname -p` once; a
    # fork of this process grown by then would be the biggest "child" in
    # RUSAGE_CHILDREN, which should show the splitting workers. Asking
    # now, while the process is small, caches the answer.
    platform.processor()
    from kerasbert.config import DataConfig
    from kerasbert.data.corpus import prepare_corpus

    config = DataConfig(
        corpus=corpus,
        corpus_format="text",
        tokenizer=tokenizer,
        cache_dir=cache_dir,
    )
    start = time.perf_counter()
    _, tokens = prepare_corpus(config, progress=False)
    seconds = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_mb": round(own, 1),
                "worker_peak_rss_mb": round(workers, 1),
                "documents": tokens.num_documents,
                "sentences": tokens.num_sentences,
                "tokens": tokens.num_tokens,
            }
        )
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--sizes",
        default="10,100",
        help="corpus sizes in MB (default 10,100; 1000 needs "
        "~3 GB of free disk)",
    )
    p.add_argument("--workdir", default="/tmp/kerasbert-corpus-prep")
    p.add_argument("--tokenizer", default=VOCAB)
    p.add_argument(
        "--train-vocab",
        action="store_true",
        help="train a WordPiece vocabulary instead",
    )
    p.add_argument("--keep", action="store_true")
    p.add_argument("--once", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.once:
        corpus, cache_dir, tokenizer = a.once
        prepare_once(corpus, cache_dir, None if tokenizer == "-" else tokenizer)
        return
    tokenizer = None if a.train_vocab else a.tokenizer
    if tokenizer and not os.path.exists(tokenizer):
        sys.exit(
            f"error: --tokenizer: {tokenizer} not found (needs "
            "../shared, or pass --train-vocab)"
        )
    from throughput import cpu_info, describe_cpu  # beside this file

    print(describe_cpu(cpu_info()))
    os.makedirs(a.workdir, exist_ok=True)
    docs = source_documents()
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
    )
    rows = []
    try:
        for mb in [float(s) for s in a.sizes.split(",")]:
            corpus = os.path.join(a.workdir, f"corpus-{mb:g}MB.txt")
            size = build_corpus(corpus, mb, docs)
            cache_dir = os.path.join(a.workdir, f"cache-{mb:g}MB")
            shutil.rmtree(cache_dir, ignore_errors=True)
            load = os.getloadavg()[0]
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--once",
                    corpus,
                    cache_dir,
                    tokenizer or "-",
                ],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row.update(
                megabytes=round(size / 1e6, 1),
                mb_per_s=round(size / 1e6 / row["seconds"], 2),
                seconds=round(row["seconds"], 1),
                load_average=round(load, 2),
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
            if not a.keep:
                os.remove(corpus)
                shutil.rmtree(cache_dir, ignore_errors=True)
    finally:
        if not a.keep:
            shutil.rmtree(a.workdir, ignore_errors=True)
    vocab = "trained 8,000 WordPiece" if a.train_vocab else "bert-base-uncased"
    print(f"\n{vocab} vocabulary, {os.cpu_count()} cores\n")
    print(
        "| corpus | seconds | MB/s | peak RSS main | peak RSS worker "
        "| tokens | load |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['megabytes']:,.0f} MB | {r['seconds']:,.1f} | "
            f"{r['mb_per_s']:.2f} | {r['peak_rss_mb']:,.0f} MiB | "
            f"{r['worker_peak_rss_mb']:,.0f} MiB | {r['tokens']:,} | "
            f"{r['load_average']} |"
        )
    last = rows[-1]
    hours = 20_000 / last["mb_per_s"] / 3600
    print(
        f"\n20 GB at {last['mb_per_s']:.2f} MB/s: about {hours:.1f} h "
        f"on this machine (linear: memory stays flat, time grows with "
        f"bytes)"
    )


if __name__ == "__main__":
    main()
