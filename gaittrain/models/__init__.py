"""Gait models."""

from gaittrain.models.set_model import SetModel

__all__ = ["SetModel"]
