"""Training data: subject splits, the pack dataset, frame sampling and the P x K sampler."""
