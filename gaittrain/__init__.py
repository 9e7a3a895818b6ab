"""gaittrain: set-based gait models and metric losses trained on gait packs."""

__version__ = "0.1.0"
