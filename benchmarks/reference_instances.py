"""The reference input pipeline `bench.py data` races: pairing and masking
written the way users copy it today.

Per-instance pairing on Python token lists (HF's former
`TextDatasetForNextSentencePrediction.create_examples_from_document`,
itself Google BERT's `create_instances_from_document`), then
`transformers.DataCollatorForLanguageModeling` with a `BertTokenizerFast`
built from the same vocabulary. Kept here, outside the package, because it
is a yardstick, not a way to train.
"""

import os
import random

from kerasbert.errors import UsageError


def documents_as_lists(corpus):
    """The corpus as Python lists: what a per-instance pipeline starts from."""
    tokens = corpus.tokens.tolist()
    so = corpus.sentence_offsets.tolist()
    do = corpus.document_offsets.tolist()
    return [
        [tokens[so[s] : so[s + 1]] for s in range(do[d], do[d + 1])]
        for d in range(len(do) - 1)
    ]


def examples_from_document(
    documents,
    doc_index,
    max_num_tokens,
    short_seq_prob,
    nsp_probability,
    tokenizer,
    rng,
):
    """HF `TextDatasetForNextSentencePrediction.create_examples_from_document`
    (transformers 4.x), i.e. Google's loop on token lists."""
    document = documents[doc_index]
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    target = max_num_tokens
    if rng.random() < short_seq_prob:
        target = rng.randint(2, max_num_tokens)
    examples, chunk, length, i = [], [], 0, 0
    while i < len(document):
        segment = document[i]
        chunk.append(segment)
        length += len(segment)
        if i == len(document) - 1 or length >= target:
            if chunk:
                a_end = 1
                if len(chunk) >= 2:
                    a_end = rng.randint(1, len(chunk) - 1)
                tokens_a = [t for s in chunk[:a_end] for t in s]
                tokens_b = []
                if len(chunk) == 1 or rng.random() < nsp_probability:
                    is_random_next = True
                    target_b = target - len(tokens_a)
                    for _ in range(10):
                        r = rng.randint(0, len(documents) - 1)
                        if r != doc_index:
                            break
                    random_document = documents[r]
                    start = rng.randint(0, len(random_document) - 1)
                    for j in range(start, len(random_document)):
                        tokens_b.extend(random_document[j])
                        if len(tokens_b) >= target_b:
                            break
                    i -= len(chunk) - a_end
                else:
                    is_random_next = False
                    for j in range(a_end, len(chunk)):
                        tokens_b.extend(chunk[j])
                while len(tokens_a) + len(tokens_b) > max_num_tokens:
                    longer = (
                        tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
                    )
                    if rng.random() < 0.5:
                        del longer[0]
                    else:
                        longer.pop()
                if tokens_a and tokens_b:
                    # What 4.x's build_inputs_with_special_tokens and
                    # create_token_type_ids_from_sequences returned (5.x
                    # removed them).
                    examples.append(
                        {
                            "input_ids": [
                                cls_id,
                                *tokens_a,
                                sep_id,
                                *tokens_b,
                                sep_id,
                            ],
                            "token_type_ids": [0] * (len(tokens_a) + 2)
                            + [1] * (len(tokens_b) + 1),
                            "next_sentence_label": int(is_random_next),
                        }
                    )
            chunk, length = [], 0
        i += 1
    return examples


def reference_batches(corpus, tokenizer, *, sequence_length, batch_size, seed):
    """Endless batches from the reference pipeline (per-epoch re-pairing)."""
    from transformers import DataCollatorForLanguageModeling

    documents = documents_as_lists(corpus)
    collator = DataCollatorForLanguageModeling(
        tokenizer,
        mlm_probability=0.15,
        pad_to_multiple_of=sequence_length,
        return_tensors="np",
        seed=seed,
    )
    rng = random.Random(seed)
    while True:
        examples = []
        for d in range(len(documents)):
            examples += examples_from_document(
                documents, d, sequence_length - 3, 0.1, 0.5, tokenizer, rng
            )
        rng.shuffle(examples)
        for b in range(len(examples) // batch_size):
            yield collator(examples[b * batch_size : (b + 1) * batch_size])


def hf_tokenizer(tokenizer, path):
    """A `BertTokenizerFast` from the saved tokenizer dir (or a vocab.txt)."""
    from transformers import BertTokenizerFast

    if os.path.isdir(path):
        hf = BertTokenizerFast.from_pretrained(path)
    elif path.endswith(".txt"):
        hf = BertTokenizerFast(vocab_file=path)
    else:
        raise UsageError(
            f"--tokenizer: the reference needs a WordPiece vocabulary, got "
            f"{path} (use --no-reference)"
        )
    if (hf.mask_token_id, hf.cls_token_id) != (
        tokenizer.mask_id,
        tokenizer.cls_id,
    ):
        raise UsageError(f"{path}: special ids differ between tokenizers")
    return hf
