"""Data: tokenizers, TFDS builders (array_record, no TensorFlow) and the packed-token pipeline."""
