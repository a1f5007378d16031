"""Text: corpus readers, cleaning, sentence splitting, tokenizers."""
