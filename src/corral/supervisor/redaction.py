"""Redaction: secret values never reach an event, an error or a status."""

from __future__ import annotations

from corral.store.secrets import SecretStore


class Redactor:
    """Replaces every secret's value in text corral shows with ``***``."""

    def __init__(self, secrets: SecretStore) -> None:
        self._secrets = secrets

    def __call__(self, lines: list[str]) -> list[str]:
        """``lines`` (a process's output, for an event or an error) with every secret's
        value replaced by ``***``: what a program prints is its business, what corral
        shows is ours."""
        values = [v for v in self._secrets.values().values() if len(v) >= 3]
        if not values or not lines:
            return lines
        out = []
        for line in lines:
            for value in values:
                line = line.replace(value, "***")
            out.append(line)
        return out
