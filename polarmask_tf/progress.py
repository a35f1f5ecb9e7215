"""A dependency-free progress bar for long command-line jobs.

Shows done/total, a bar, items per second, elapsed time, ETA and named values (for example
per-loss values). On a terminal it redraws one line; when stdout is not a terminal (logs, CI)
it prints a full line at most every `log_every_s` seconds and at the end, so logs stay short.
"""

import sys
import time


def _format_seconds(seconds):
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class ProgressBar:
    """Progress over `total` items.

    Usage:
        bar = ProgressBar(total=len(items), desc="upper bound")
        for item in items:
            ...
            bar.update(1, loss=0.42)
        bar.close()
    """

    def __init__(self, total, desc="", width=30, stream=None, log_every_s=10.0):
        self.total = max(int(total), 0)
        self.desc = desc
        self.width = width
        self.stream = stream if stream is not None else sys.stderr
        self.log_every_s = log_every_s
        self.count = 0
        self.values = {}
        self._start = time.monotonic()
        self._last_draw = -float("inf")
        self._interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._closed = False

    def update(self, n=1, **values):
        """Advances by `n` items and records named values (floats are shown with 4 digits)."""
        self.count += n
        self.values.update(values)
        now = time.monotonic()
        min_interval = 0.1 if self._interactive else self.log_every_s
        if now - self._last_draw >= min_interval or self.count >= self.total:
            self._draw(now)

    def line(self, now=None):
        """The text of the bar as it stands."""
        now = time.monotonic() if now is None else now
        elapsed = now - self._start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        fraction = min(self.count / self.total, 1.0) if self.total else 1.0
        filled = int(round(fraction * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        eta = (self.total - self.count) / rate if rate > 0 else float("nan")
        eta_text = _format_seconds(eta) if eta == eta else "--:--"
        parts = [
            f"{self.desc} " if self.desc else "",
            f"{self.count}/{self.total} [{bar}] {rate:.1f}/s",
            f" elapsed {_format_seconds(elapsed)} ETA {eta_text}",
        ]
        for name, value in self.values.items():
            parts.append(f" {name}={value:.4f}" if isinstance(value, float) else f" {name}={value}")
        return "".join(parts)

    def _draw(self, now):
        self._last_draw = now
        if self._interactive:
            self.stream.write("\r" + self.line(now) + "\033[K")
        else:
            self.stream.write(self.line(now) + "\n")
        self.stream.flush()

    def close(self):
        """Draws the final state once and ends the line."""
        if self._closed:
            return
        self._closed = True
        if self._interactive:
            self._draw(time.monotonic())
            self.stream.write("\n")
        elif self._last_draw < 0 or self.count < self.total:
            self._draw(time.monotonic())
        self.stream.flush()
