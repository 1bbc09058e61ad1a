"""The old name of :mod:`cbn.datasets`, kept importable."""
from cbn.datasets import load_digits_split

__all__ = ["load_digits_split"]
