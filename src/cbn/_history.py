"""History, what ``Network.fit`` records per epoch, and its learning curves (matplotlib,
optional: ``pip install 'cbn[plot]'``). They live together because each needs the other:
``History.plot`` draws through :func:`plot_history`, which tells one run from several by type.
"""


class History(dict):
    """What ``fit`` records per epoch: lists under 'loss', 'accuracy' (softmax and sigmoid
    outputs), 'val_loss', 'val_accuracy' (with validation data), 'lr' (with a learning-rate
    schedule) and 'time' (seconds)."""

    @property
    def epochs(self):
        """Number of epochs recorded."""
        return len(self.get("loss", ()))

    def plot(self, path=None, *, title=None):
        """Draw the loss and accuracy curves, train and validation; see :func:`cbn.plot_history`."""
        return plot_history(self, path, title=title)


def figure_class():
    """matplotlib's Figure, or an ImportError that says how to install it."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'cbn[plot]' "
                          "(or pip install matplotlib)") from None
    return Figure


def plot_history(history, path=None, *, title=None):
    """Draw loss and accuracy per epoch, training solid and validation dashed.

    Parameters
    ----------
    history : History or dict of str to History
        One run, or several runs by label (e.g. ``{"batch norm": h1, "no batch norm": h2}``),
        drawn in one figure with a colour per run.
    path : str or path-like, optional
        Save the figure there (the format follows the suffix, e.g. ``.png``).
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
        A figure not attached to pyplot: it is shown by Jupyter, saved by ``savefig``, and
        freed with the last reference.
    """
    Figure = figure_class()
    runs = {"": history} if isinstance(history, History) else dict(history)
    for label, run in runs.items():
        if not isinstance(run, History):
            raise TypeError(f"history: expected a cbn History or a dict of them, "
                            f"got {type(run).__name__} for {label!r}")
    metrics = ["loss"] + (["accuracy"] if any("accuracy" in run for run in runs.values()) else [])
    fig = Figure(figsize=(5.5 * len(metrics), 4), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        for i, (label, run) in enumerate(runs.items()):
            epochs = range(1, run.epochs + 1)
            for key, style, kind in ((metric, "-", "train"), (f"val_{metric}", "--", "validation")):
                if key in run:
                    ax.plot(epochs, run[key], style, color=f"C{i}", label=f"{label} {kind}".strip())
        if metric == "loss":
            ax.set_yscale("log")  # losses shrink by orders of magnitude
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
