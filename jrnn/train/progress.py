"""The progress bar of ``fit`` (tqdm on stderr): steps done, steps per second, the last loss."""

from __future__ import annotations

import tqdm

__all__ = ["Progress"]


class Progress:
    """A bar over ``total`` steps starting at ``initial``; shown only when ``enabled``. A context
    manager that closes the bar."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True):
        self._bar = tqdm.tqdm(
            total=total, initial=min(initial, total), unit="step", disable=not enabled,
            dynamic_ncols=True, leave=True,
        )  # fmt: skip

    def step(self, loss: float) -> None:
        """One more step done, with its loss."""
        self.advance(1, loss)

    def advance(self, n: int, loss: float) -> None:
        """``n`` more steps done, the last with ``loss``."""
        if self._bar.disable:
            return
        self._bar.set_postfix_str(f"loss={loss:.4g}", refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
