"""What ``Network.fit`` prints: a progress bar per epoch (verbose=1) or one line (verbose=2).

The bar is tqdm's when tqdm is installed; otherwise a plain line redrawn with a carriage
return at most every REDRAW_SECONDS, and only on a terminal (a log file gets the final line).
"""
import sys
import time

REDRAW_SECONDS = 0.1


def _tqdm():
    """tqdm's bar class, or None if tqdm is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def summary(history):
    """The latest epoch's values, e.g. 'loss 0.1234  accuracy 0.9600  (0.05s)'."""
    parts = [f"{key} {values[-1]:.4g}" if key == "lr" else f"{key} {values[-1]:.4f}"
             for key, values in history.items() if key != "time"]
    return "  ".join(parts) + f"  ({history['time'][-1]:.2f}s)"


class Progress:
    """Reports one fit: ``begin(epoch)``, ``step(loss)`` per batch, ``end(epoch, history)``."""

    def __init__(self, verbose, epochs, steps, file=None):
        self.verbose, self.epochs, self.steps = verbose, epochs, steps
        self.file = file if file is not None else sys.stdout
        self.tqdm = _tqdm() if verbose == 1 else None
        self.redraw = verbose == 1 and self.tqdm is None and self.file.isatty()
        self._bar = None

    def begin(self, epoch, done=0):
        """Called before each epoch; ``done`` steps of it were taken before a resume."""
        self._epoch, self._done, self._loss_sum, self._next_draw = epoch, done, 0.0, 0.0
        self._losses = 0   # the running loss averages this call's steps
        if self.tqdm is not None:
            self._bar = self.tqdm(total=self.steps, initial=done,
                                  desc=f"epoch {epoch}/{self.epochs}", unit="step",
                                  file=self.file, leave=True, dynamic_ncols=True)

    def step(self, loss):
        """Called after every batch with its mean loss."""
        self._done += 1
        self._losses += 1
        self._loss_sum += loss
        if self._bar is not None:
            self._bar.set_postfix_str(f"loss {self._loss_sum / self._losses:.4f}", refresh=False)
            self._bar.update(1)
        elif self.redraw and time.perf_counter() >= self._next_draw:
            self._next_draw = time.perf_counter() + REDRAW_SECONDS
            filled = 20 * self._done // self.steps
            bar = "=" * filled + " " * (20 - filled)
            self.file.write(f"\repoch {self._epoch}/{self.epochs} [{bar}] {self._done}/{self.steps}"
                            f"  loss {self._loss_sum / self._losses:.4f}")
            self.file.flush()

    def end(self, epoch, history):
        """Called once the epoch is recorded in history (validation included)."""
        if self._bar is not None:
            self._bar.set_postfix_str(summary(history), refresh=False)
            self._bar.close()
            self._bar = None
            return
        # \r and a clearing pad overwrite a redrawn bar; a plain line otherwise
        line = f"epoch {epoch}/{self.epochs}  {summary(history)}"
        prefix = "\r" + " " * 79 + "\r" if self.redraw else ""
        self.file.write(prefix + line + "\n")
        self.file.flush()

    def close(self):
        """Close a bar left open by an error or Ctrl-C."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
