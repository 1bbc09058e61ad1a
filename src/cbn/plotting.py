"""Learning curves with matplotlib (optional: ``pip install 'cbn[plot]'``).

The public name of the plotting functions; they live with :class:`~cbn.History` in
cbn._history, so that neither module imports the other.
"""
from cbn._history import figure_class, plot_history

__all__ = ["plot_history", "figure_class"]
