"""The state of one parse: the environment and base directory it reads, the problems found so
far, and what must be unique across the whole file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class _Context:
    env: Mapping[str, str]
    base_dir: Path
    # False: passwords kept elsewhere are checked as keys but not read (UnreadSecret).
    read_secrets: bool = True
    errors: list[str] = field(default_factory=list)
    first_use: dict[tuple[str, str], str] = field(default_factory=dict)
    # (host, port, username, folder) -> the mailbox that watches it
    watched: dict[tuple[str, int, str, str], str] = field(default_factory=dict)

    def unique(self, key: tuple[str, str], label: str, path: str) -> bool:
        """Whether this is the first use of `key`; a later one is an error."""
        if key in self.first_use:
            self.errors.append(f"{path}: {label} (first used at {self.first_use[key]})")
            return False
        self.first_use[key] = path
        return True

    def path(self, raw: str) -> Path:
        """Relative paths are relative to the configuration file's directory."""
        resolved = Path(raw).expanduser()
        return resolved if resolved.is_absolute() else self.base_dir / resolved
