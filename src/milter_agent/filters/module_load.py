"""Load one filter module and check what it returns; used in the daemon and in worker processes.

``module_name`` is one of:

- a Python file (``/path/mod.py``): compiled from source at every load (never from, or into,
  ``__pycache__``) under a module name unique to that load, so a changed file really reloads;
- an importable Python object (``package.mod`` or ``package.mod:func``), imported as usual;
- a C shared library (any other path, typically ``/path/mod.so``), opened with ctypes and
  closed with dlclose on unload. Its ``int process_message_by_module(int argc, char **argv)``
  gets ``argv[0]`` = the library path and ``argv[1..]`` = the expanded ``exec_cmd`` words.

Anything that goes wrong here is a :class:`FilterError` naming the module and the reason.
"""

from __future__ import annotations

import _ctypes
import ctypes
import importlib
import importlib.machinery
import importlib.util
import inspect
import itertools
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from milter_agent.errors import FilterError
from milter_agent.filters.module_api import VERDICTS, ModuleMessage, ModuleResult

FUNCTION = "process_message_by_module"
Kind = Literal["file", "import", "library"]

_loads = itertools.count(1)


@dataclass(slots=True)
class LoadedModule:
    """A loaded module: its process function, optional hooks, and how to let it go.

    ``owner`` is set for an importable module: the object its hooks come from. Python imports a
    module once per process, so every load of it shares that object (and its state).
    """

    reference: str
    kind: Kind
    function: Callable[[list[str], ModuleMessage], Any]
    setup: Callable[..., Any] | None = None
    teardown: Callable[[], Any] | None = None
    release: Callable[[], None] | None = None
    owner: object | None = None

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.function)

    def call(self, args: list[str], message: ModuleMessage) -> Any:
        return self.function(args, message)

    def unload(self) -> None:
        """Forget the module (``sys.modules`` entry, or dlclose). Hooks are the caller's job."""
        if self.release is not None:
            release, self.release = self.release, None
            release()


def module_kind(reference: str) -> Kind:
    if reference.endswith(".py"):
        return "file"
    if "/" in reference:
        return "library"
    return "import"


def module_file(reference: str) -> str | None:
    """The file a reload should watch: the .py or .so path (None for importable objects)."""
    return None if module_kind(reference) == "import" else reference


def load_module(reference: str) -> LoadedModule:
    """Load ``reference`` (see the module docstring); raises FilterError with the reason."""
    loader = {"file": _load_file, "import": _load_import, "library": _load_library}
    try:
        return loader[module_kind(reference)](reference)
    except FilterError:
        raise
    except BaseException as exc:  # any failure of foreign code is a filter error
        raise FilterError(f"cannot load module {reference}: {describe(exc)}") from exc


def describe(exc: BaseException) -> str:
    """``ValueError: bad thing`` (a FilterError's own text stands alone)."""
    if isinstance(exc, FilterError):
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _FreshSourceLoader(importlib.machinery.SourceFileLoader):
    """Compiles the source at each load: a pyc checked by whole-second mtime and size could
    hide a quick edit, and the daemon's user may not be able to write ``__pycache__``."""

    def get_code(self, fullname: str) -> Any:
        return self.source_to_code(self.get_data(self.path), self.path)


def _load_file(path: str) -> LoadedModule:
    stem = re.sub(r"\W", "_", os.path.basename(path)[:-3])
    name = f"milter_agent_module_{stem}_{next(_loads)}"
    loader = _FreshSourceLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickle look classes up there
    try:
        loader.exec_module(module)
        loaded = _from_namespace(path, "file", module)
    except BaseException:
        sys.modules.pop(name, None)
        raise

    def release() -> None:
        sys.modules.pop(name, None)

    loaded.release = release
    return loaded


def _load_import(reference: str) -> LoadedModule:
    module_path, _, attribute = reference.partition(":")
    module = importlib.import_module(module_path)
    target: Any = module
    for part in filter(None, attribute.split(".")):
        target = getattr(target, part)
    if attribute and callable(target) and not hasattr(target, FUNCTION):
        loaded = LoadedModule(reference, "import", target, owner=module)
        _add_hooks(loaded, module)
        return loaded
    loaded = _from_namespace(reference, "import", target)
    loaded.owner = target
    return loaded


def _from_namespace(reference: str, kind: Kind, namespace: Any) -> LoadedModule:
    function = getattr(namespace, FUNCTION, None)
    if not callable(function):
        raise FilterError(f"module {reference} has no function {FUNCTION}")
    loaded = LoadedModule(reference, kind, function)
    _add_hooks(loaded, namespace)
    return loaded


def _add_hooks(loaded: LoadedModule, namespace: Any) -> None:
    setup, teardown = getattr(namespace, "setup", None), getattr(namespace, "teardown", None)
    loaded.setup = setup if callable(setup) else None
    loaded.teardown = teardown if callable(teardown) else None


def _load_library(path: str) -> LoadedModule:
    try:
        library = ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_LOCAL)
    except OSError as exc:
        raise FilterError(f"cannot load module {path}: {exc}") from None
    handle = library._handle
    try:
        function = getattr(library, FUNCTION)
    except AttributeError:
        _ctypes.dlclose(handle)
        raise FilterError(f"module {path} has no function {FUNCTION}") from None
    function.argtypes = (ctypes.c_int, ctypes.POINTER(ctypes.c_char_p))
    function.restype = ctypes.c_int
    program = os.fsencode(path)

    def call(args: list[str], message: ModuleMessage) -> int:
        words = [program, *map(os.fsencode, args)]
        argv = (ctypes.c_char_p * (len(words) + 1))(*words, None)
        return int(function(len(words), argv))

    return LoadedModule(path, "library", call, release=lambda: _ctypes.dlclose(handle))


# --- what a module returns ------------------------------------------------------------------


def normalize_outcome(value: object) -> int | ModuleResult:
    """An int (None counts as 0), or a ModuleResult made of plain tuples and bytes, so it can
    be pickled out of a worker. Anything else is a FilterError."""
    if value is None:
        return 0
    if isinstance(value, int):
        return int(value)
    if not isinstance(value, ModuleResult):
        raise FilterError(f"returned {type(value).__name__}; expected an int or a ModuleResult")
    try:
        return _plain(value)
    except (TypeError, ValueError) as exc:
        raise FilterError(f"returned a bad ModuleResult: {exc}") from None


def _plain(result: ModuleResult) -> ModuleResult:
    if result.verdict not in VERDICTS:
        raise ValueError(f"unknown verdict {result.verdict!r}")
    body = result.new_body
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogateescape")
    if body is not None and not isinstance(body, bytes):
        raise TypeError(f"new_body is {type(body).__name__}, not bytes or str")
    return ModuleResult(
        verdict=result.verdict,
        text=_string(result.text, "text"),
        reply_code=None if result.reply_code is None else _string(result.reply_code, "reply_code"),
        add_headers=_pairs(result.add_headers, "add_headers"),
        change_headers=_pairs(result.change_headers, "change_headers"),
        remove_headers=_strings(result.remove_headers, "remove_headers"),
        add_recipients=_strings(result.add_recipients, "add_recipients"),
        remove_recipients=_strings(result.remove_recipients, "remove_recipients"),
        new_body=body,
    )


def _string(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} is {type(value).__name__}, not str")
    return value


def _strings(values: Sequence[str], what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise TypeError(f"{what} must be a sequence of strings, not one string")
    return tuple(_string(value, what) for value in values)


def _pairs(values: Sequence[tuple[str, str]], what: str) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for item in values:
        name, value = item
        pairs.append((_string(name, what), _string(value, what)))
    return tuple(pairs)
