"""kerasbert: BERT pretraining and fine-tuning in Keras 3 on TensorFlow."""

__version__ = "0.1.0"
