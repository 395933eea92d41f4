"""Running as the daemon user: look it up, drop to it after binding, check we can still work.

Sockets are bound as root, then the process becomes the user (``-u``) with that user's groups.
Running as root needs ``-u root`` said explicitly. After the drop the interpreter and the
installation must still be readable, or the first lazy import would fail mid-message: a
virtualenv under a 0700 home directory is the usual trap, so it is checked at start-up.
"""

from __future__ import annotations

import grp
import os
import pwd
import sys
from dataclasses import dataclass
from pathlib import Path

from milter_agent.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    uid: int
    gid: int

    @property
    def owner(self) -> tuple[int, int]:
        return self.uid, self.gid


def resolve_user(name: str, explicit: bool) -> Account | None:
    """The account to drop to, or None to stay as we are (not root, no ``-u`` given)."""
    if os.geteuid() != 0:
        if explicit and name != pwd.getpwuid(os.geteuid()).pw_name:
            raise ConfigError(f"-u {name}: only root can switch users")
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        hint = " (or start with -u root to run as root on purpose)" if not explicit else ""
        raise ConfigError(
            f"user {name!r} does not exist: create it or choose one with -u{hint}"
        ) from None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def drop_to(account: Account) -> None:
    """Become ``account`` for good, with its supplementary groups."""
    if os.geteuid() != 0 or account.uid == 0:
        return
    os.initgroups(account.name, account.gid)
    os.setgid(account.gid)
    os.setuid(account.uid)
    if os.getuid() != account.uid or os.geteuid() != account.uid:
        raise ConfigError(f"could not drop privileges to {account.name}")


def needed_paths() -> list[tuple[str, int]]:
    """What the daemon must still read after the drop, with the access it needs; call it
    before dropping privileges (afterwards the paths may not even be visible)."""
    needed = [(sys.executable, os.X_OK), (str(Path(__file__).parent), os.R_OK | os.X_OK)]
    needed += [(p, os.R_OK | os.X_OK) for p in sys.path if p and os.path.isdir(p)]
    return needed


def check_installation_readable(account: Account, needed: list[tuple[str, int]]) -> None:
    """Fail clearly if the dropped-to user cannot read what ``needed_paths()`` listed."""
    problems = [path for path, mode in needed if not os.access(path, mode)]
    if problems:
        raise ConfigError(
            f"user {account.name} cannot read {', '.join(problems)}: install milter-agent "
            "where that user can read it (a virtualenv under a 0700 home directory is the "
            "usual trap), or choose another user with -u"
        )


def check_config_readable(account: Account, path: str) -> None:
    """After the drop: every reload reads the configuration as this user, so a file only root
    can read would refuse every edit later; say so now, at start."""
    if os.access(path, os.R_OK):
        return
    try:
        group = grp.getgrgid(account.gid).gr_name
    except KeyError:
        group = str(account.gid)
    raise ConfigError(
        f"user {account.name} cannot read the configuration file {path}, so no reload could "
        f"read it: make it readable for that user (e.g. chgrp {group} {path} && chmod 640 "
        f"{path}, and let the user into its directories)"
    )


def group_id(name: str | None) -> int | None:
    if name is None:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"group {name!r} does not exist") from None
