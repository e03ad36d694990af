"""Kaggle image-competition pipeline: one module per stage (see README.md)."""

__version__ = "0.1.0"
