"""The tf.data setting every kerasbert dataset shares.

No autotuning: tf.data's autotuning thread sleeps up to 60 s between
rounds, and releasing an iterator waits for it to wake. Measured on TF 2.21:
Keras dropping an iterator (at the end of each `fit` call, and of each
evaluation when `fit` ran it) stalled 30-150 s once the iterator had lived
a minute or more -- over half the wall time of the learning benchmark.
Our pipelines set their parallelism and prefetch depth themselves.
"""

import tensorflow as tf


def without_autotune(dataset: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)
