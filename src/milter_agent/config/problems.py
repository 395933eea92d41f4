"""Collecting every problem of a configuration in one pass, and the error that reports them all.

A config with errors is refused whole, so the administrator should see all of its errors at
once rather than one per reload attempt.
"""

from __future__ import annotations

from collections.abc import Sequence

from milter_agent.errors import ConfigError


class ConfigErrors(ConfigError):
    """Several configuration errors; ``errors`` lists them in file order.

    ``str()`` is the single error when there is one, else a count followed by one line each.
    """

    def __init__(self, errors: Sequence[ConfigError], *, path: str | None = None) -> None:
        if not errors:
            raise ValueError("ConfigErrors needs at least one error")
        self.errors: tuple[ConfigError, ...] = tuple(errors)
        first = self.errors[0]
        if len(self.errors) == 1:
            super().__init__(first.reason, path=first.path, line=first.line)
            return
        lines = "\n".join(f"  {error}" for error in self.errors)
        super().__init__(f"{len(self.errors)} errors:\n{lines}", path=path)


class Problems:
    """Errors and warnings found while reading one file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.errors: list[ConfigError] = []
        self.warnings: list[str] = []

    def error(self, line: int | None, key: str | None, message: str) -> None:
        text = f"{key}: {message}" if key else message
        self.errors.append(ConfigError(text, path=self.path, line=line))

    def warn(self, line: int | None, key: str | None, message: str) -> None:
        where = f"{self.path}:{line}" if line is not None else self.path
        self.warnings.append(f"{where}: {key}: {message}" if key else f"{where}: {message}")

    def raise_if_any(self) -> None:
        if self.errors:
            ordered = sorted(self.errors, key=lambda error: error.line or 0)
            raise ConfigErrors(ordered, path=self.path)
