"""Evaluation: embeddings of test sequences, published protocols, metrics and reports."""
