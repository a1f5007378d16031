"""Data: the token cache, NSP pairing, dynamic masking, tf.data datasets.

Submodules are imported by path (`kerasbert.data.cache`, ...): the cache
needs no TensorFlow, and commands validate input before TF loads.
"""
