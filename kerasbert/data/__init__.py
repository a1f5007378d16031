"""Data: corpus preparation and its token cache, NSP pairing, dynamic
masking, tf.data datasets.

Submodules are imported by path (`kerasbert.data.corpus`, ...): corpus
preparation needs no TensorFlow, and commands validate input before TF
loads.
"""
