"""Corpus reading, demo corpus, session splits, frozen encoders and the feature store."""
