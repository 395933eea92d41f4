"""Module filters in the daemon: loading, reloading, errors, sync/async/C calls, result objects,
timeouts, and the engine applying what a module returns."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from email.parser import BytesParser
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from milter_agent.config.model import FilterSpec
from milter_agent.config.options import parse_command_line
from milter_agent.config.parser import parse_config_text
from milter_agent.control import stats
from milter_agent.engine import Engine
from milter_agent.errors import FilterError
from milter_agent.filters import module as modules
from milter_agent.filters.module import ModuleHost
from milter_agent.filters.module_api import ModuleMessage, ModuleResult
from milter_agent.filters.module_load import load_module, module_kind, normalize_outcome
from milter_agent.filters.module_threads import ThreadPool
from milter_agent.message import Message
from milter_agent.pipeline import Decision, Verdict
from support.engine import BODY, HEADERS, spooled_message
from support.engine import make_engine as engine_for

REPO = Path(__file__).resolve().parents[2]
MSG = ModuleMessage("a@example.com", ("b@example.com",), (("Subject", "Hi"),), {"i": "Q1"})


def spec(name: str, module: str, *, safe: bool = False, timeout: float = 5.0) -> FilterSpec:
    return FilterSpec(name=name, argv=(), module_name=module, module_safe_use=safe, timeout=timeout)


def write_module(path: Path, source: str) -> Path:
    path.write_text(textwrap.dedent(source))
    return path


def compile_c(directory: Path, name: str, source: str) -> Path:
    src = directory / f"{name}.c"
    src.write_text(textwrap.dedent(source))
    out = directory / f"{name}.so"
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            "-Wall",
            "-Werror",
            f"-I{REPO / 'include'}",
            "-o",
            str(out),
            str(src),
        ],
        check=True,
        timeout=60,
    )
    return out


def call(host: ModuleHost, filter_spec: FilterSpec, args: list[str] | None = None) -> Any:
    async def go() -> Any:
        try:
            return await host.call(filter_spec, args or [], MSG, kill=False)
        finally:
            await host.close()

    return asyncio.run(go())


# --- the engine with module filters -------------------------------------------------------------


def message(tmp_path: Path) -> Message:
    spool_file = tmp_path / "spool" / "m.msg"
    return spooled_message(
        spool_file, "<a@example.com>", ["<b@example.com>"], HEADERS, BODY, {"i": "QID42"}
    )


def make_engine(tmp_path: Path, text: str, *argv: str) -> Engine:
    eng = engine_for(tmp_path, text, *argv)
    modules.HOST.configure(eng.config.filters)
    return eng


def run(tmp_path: Path, text: str, *argv: str, messages: int = 1) -> tuple[Engine, Decision]:
    eng = make_engine(tmp_path, text, *argv)

    async def go() -> Decision:
        try:
            for _ in range(messages):
                decision = await eng.run(message(tmp_path))
            return decision
        finally:
            await modules.HOST.close()

    return eng, asyncio.run(go())


@pytest.fixture(autouse=True)
def fresh_host() -> Iterator[None]:
    yield
    assert not modules.HOST.loaded, "a test left modules loaded in the daemon's host"


def test_python_file_int_result_maps_like_an_exit_code(tmp_path: Path) -> None:
    mod = write_module(
        tmp_path / "refuse.py",
        """
        def process_message_by_module(args, message):
            return 1 if message.subject == "Hello there" else 0
        """,
    )
    _, d = run(
        tmp_path,
        f"""
        [Filter]
        task_name = refuse
        module_name = "{mod}"
        reject_exit_codes = "1"
        reject_message = "Not this subject."
        """,
    )
    assert d.verdict is Verdict.REJECT
    assert d.reply is not None and d.reply.lines == ("Not this subject.",)
    assert d.steps[0].outcome == "reject"


def test_exec_cmd_is_expanded_like_a_programs_and_the_files_are_read_back(tmp_path: Path) -> None:
    seen = tmp_path / "args.txt"
    mod = write_module(
        tmp_path / "files.py",
        f"""
        from pathlib import Path
        def process_message_by_module(args, message):
            Path({str(seen)!r}).write_text("\\n".join(args))
            file, sender, reply, headers = args
            Path(reply).write_text("Rejected by the files module")
            Path(headers).write_text("X-Checked: yes\\n")
            assert Path(file).read_bytes().endswith(b"body line\\r\\n")
            return 5
        """,
    )
    _, d = run(
        tmp_path,
        f"""
        [Filter]
        task_name = files
        module_name = "{mod}"
        exec_cmd = "%f %s %r %h"
        tempfail_exit_codes = "5"
        """,
        "-H",
    )
    words = seen.read_text().split("\n")
    assert words[0] == str(tmp_path / "spool" / "m.msg") and words[1] == "a@example.com"
    assert words[2].endswith(".reply") and words[3].endswith(".hdr")
    assert d.verdict is Verdict.TEMPFAIL
    assert d.reply is not None and d.reply.lines == ("Rejected by the files module",)
    assert sorted(p.name for p in (tmp_path / "spool").iterdir()) == ["m.msg"]


def test_result_object_sets_reply_code_and_text(tmp_path: Path) -> None:
    mod = write_module(
        tmp_path / "res.py",
        """
        from milter_agent.filters.module_api import ModuleResult
        def process_message_by_module(args, message):
            return ModuleResult("reject", text="No.\\nReally not.", reply_code="554 5.7.0")
        """,
    )
    _, d = run(tmp_path, f'[Filter]\ntask_name = res\nmodule_name = "{mod}"\n')
    assert d.verdict is Verdict.REJECT and d.reply is not None
    assert (d.reply.code, d.reply.enhanced, d.reply.lines) == (
        "554",
        "5.7.0",
        ("No.", "Really not."),
    )


def test_result_object_changes_are_applied_with_the_switches(tmp_path: Path) -> None:
    mod = write_module(
        tmp_path / "change.py",
        """
        from milter_agent.filters.module_api import ModuleResult
        def process_message_by_module(args, message):
            return ModuleResult(
                add_headers=[("X-Added", "1")],
                change_headers=[("Subject", "Changed")],
                remove_headers=["To"],
                add_recipients=["c@example.com"],
                remove_recipients=["b@example.com"],
                new_body="new\\nbody\\n",
            )
        """,
    )
    config = f'[Filter]\ntask_name = change\nmodule_name = "{mod}"\n'
    _, d = run(tmp_path, config, "-ARHGB")
    assert d.verdict is Verdict.CONTINUE
    assert d.changes.add_headers == [("X-Added", "1")]
    assert sorted(d.changes.change_headers) == [("Subject", 1, "Changed"), ("To", 1, "")]
    assert d.changes.add_recipients == ["<c@example.com>"]
    assert d.changes.delete_recipients == ["<b@example.com>"]
    assert d.changes.new_body is not None
    assert d.changes.new_body.read_bytes() == b"new\r\nbody\r\n"
    d.changes.new_body.unlink()


def test_result_object_changes_are_refused_without_the_switches(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mod = write_module(
        tmp_path / "change.py",
        """
        from milter_agent.filters.module_api import ModuleResult
        def process_message_by_module(args, message):
            return ModuleResult(add_recipients=["c@example.com"], add_headers=[("X-A", "1")])
        """,
    )
    _, d = run(tmp_path, f'[Filter]\ntask_name = change\nmodule_name = "{mod}"\n')
    assert not d.changes
    assert "add recipient c@example.com refused: option -A is not given" in caplog.text
    assert "add header X-A refused: option -H is not given" in caplog.text


@pytest.mark.parametrize(
    ("returned", "reason"),
    [
        ('"yes"', "returned str; expected an int or a ModuleResult"),
        ('ModuleResult("reject", reply_code="451 4.7.1")', "must be of class 5"),
        ('ModuleResult(add_headers=[("Bad Name", "x")])', "is not a header field name"),
        ('ModuleResult(add_recipients=["a b@example.com"])', "contains a space"),
        ('ModuleResult("maybe")', "unknown verdict 'maybe'"),
    ],
)
def test_bad_results_are_filter_errors(tmp_path: Path, returned: str, reason: str) -> None:
    mod = write_module(
        tmp_path / "bad.py",
        f"""
        from milter_agent.filters.module_api import ModuleResult
        def process_message_by_module(args, message):
            return {returned}
        """,
    )
    eng, d = run(tmp_path, f'[Filter]\ntask_name = bad\nmodule_name = "{mod}"\n', "-AH")
    assert d.verdict is Verdict.CONTINUE and d.steps[0].outcome == "error:skipped"
    assert reason in str(eng.registry.get("bad").last_error)


def test_an_exception_is_a_filter_error_counted_toward_the_threshold(tmp_path: Path) -> None:
    mod = write_module(
        tmp_path / "boom.py",
        """
        def process_message_by_module(args, message):
            raise RuntimeError("database is down")
        """,
    )
    config = f'[Filter]\ntask_name = boom\nmodule_name = "{mod}"\n'
    eng, d = run(tmp_path, config, "-E", "-m", "2", messages=2)
    state = eng.registry.get("boom")
    assert d.verdict is Verdict.TEMPFAIL
    assert state.errors == 2 and state.disabled
    assert state.last_error == "module raised RuntimeError: database is down"


def test_a_module_that_calls_sys_exit_does_not_stop_the_daemon(tmp_path: Path) -> None:
    mod = write_module(
        tmp_path / "quit.py",
        """
        import sys
        async def process_message_by_module(args, message):
            sys.exit(3)
        """,
    )
    eng, d = run(tmp_path, f'[Filter]\ntask_name = quit\nmodule_name = "{mod}"\n')
    assert d.steps[0].outcome == "error:skipped"
    assert eng.registry.get("quit").last_error == "module raised SystemExit: 3"


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (
            "import socket\ndef process_message_by_module(args, message):\n"
            "    raise socket.timeout('timed out')\n",
            "module raised TimeoutError: timed out",
        ),
        (
            "import asyncio\nasync def process_message_by_module(args, message):\n"
            "    await asyncio.wait_for(asyncio.sleep(10), 0.01)\n",
            "module raised TimeoutError",
        ),
    ],
    ids=["sync socket.timeout", "async wait_for"],
)
def test_a_timeout_error_of_the_module_itself_is_not_a_filter_timeout(
    tmp_path: Path, source: str, reason: str
) -> None:
    mod = write_module(tmp_path / "own.py", source)
    config = f'[Filter]\ntask_name = own\ntask_timeout = 5\nmodule_name = "{mod}"\n'
    started = time.monotonic()
    eng, d = run(tmp_path, config, "-M")
    state = eng.registry.get("own")
    assert time.monotonic() - started < 3
    assert d.steps[0].outcome == "error:skipped" and state.last_error == reason
    assert (state.errors, state.timeouts, state.kills) == (1, 0, 0)


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (
            "def other(args, message):\n    return 0\n",
            "module {mod} has no function process_message_by_module",
        ),
        (
            "import no_such_module_here\n",
            "cannot load module {mod}: ModuleNotFoundError: No module named 'no_such_module_here'",
        ),
    ],
    ids=["no function", "import fails"],
)
def test_a_module_that_cannot_load_counts_toward_the_threshold_and_shows_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, source: str, reason: str
) -> None:
    mod = write_module(tmp_path / "broken.py", source)
    config = f'[Filter]\ntask_name = broken\nmodule_name = "{mod}"\nerror_threshold = 2\n'
    eng, d = run(tmp_path, config, messages=3)
    (data,) = stats.filters(eng.config, eng.registry)
    assert d.steps[0].outcome == "skipped:disabled"  # the third message: switched off at two
    assert (data["errors"], data["disabled"], data["timeouts"]) == (2, True, 0)
    assert data["last_error"] == reason.format(mod=mod)
    failures = [r.getMessage() for r in caplog.records if " failed: " in r.getMessage()]
    assert failures == [f"filter broken failed: {reason.format(mod=mod)}"] * 2
    assert "filter broken switched off" in caplog.text


def test_the_module_sees_the_envelope_client_and_headers_of_the_message(tmp_path: Path) -> None:
    seen = tmp_path / "seen.json"
    mod = write_module(
        tmp_path / "look.py",
        f"""
        import json
        def process_message_by_module(args, message):
            fields = ("sender", "recipients", "queue_id", "client_address", "client_name",
                      "helo", "size", "subject")
            found = {{name: getattr(message, name) for name in fields}}
            found["macro_i"] = message.macros["i"]
            found["to"] = message.header("to")
            found["body"] = message.email.get_content()
            with open({str(seen)!r}, "w") as f:
                json.dump(found, f)
        """,
    )
    run(tmp_path, f'[Filter]\ntask_name = look\nmodule_name = "{mod}"\n')
    assert json.loads(seen.read_text()) == {
        "sender": "a@example.com",
        "recipients": ["b@example.com"],
        "queue_id": "QID42",
        "client_address": "192.0.2.1",
        "client_name": "client.example",
        "helo": "helo.example",
        "size": message(tmp_path).size,
        "subject": "Hello there",
        "macro_i": "QID42",
        "to": "<b@example.com>",
        "body": "body line\n",
    }


def test_the_message_is_read_only_and_its_email_is_parsed_once_on_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.eml"
    path.write_bytes(b"Subject: Hi\r\n\r\nbody\r\n")
    parses: list[Path] = []
    real_parse = BytesParser.parse

    def counting_parse(self: BytesParser, fp: Any, headersonly: bool = False) -> Any:
        parses.append(Path(fp.name))
        return real_parse(self, fp, headersonly)

    monkeypatch.setattr(BytesParser, "parse", counting_parse)
    msg = ModuleMessage("a@x", ("b@x",), (("Subject", "Hi"),), {"i": "Q"}, path=path)
    assert parses == []  # nothing is parsed until a module asks
    first = msg.email
    assert msg.email is first and parses == [path] and first["Subject"] == "Hi"
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.sender = "evil@x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        msg.macros["i"] = "changed"  # type: ignore[index]
    copy = pickle.loads(pickle.dumps(msg))  # as a worker gets it: parsed again there, lazily
    assert copy.macros == {"i": "Q"} and isinstance(copy.macros, MappingProxyType)
    assert copy.email["Subject"] == "Hi" and len(parses) == 2
    with pytest.raises(FileNotFoundError, match="this message has no file"):
        _ = MSG.email


# --- loading ---------------------------------------------------------------------------------


def test_module_kinds() -> None:
    assert module_kind("/x/mod.py") == "file"
    assert module_kind("/x/mod.so") == "library"
    assert module_kind("/x/libfilter.so.1") == "library"
    assert module_kind("pkg.mod:func") == "import"
    assert module_kind("pkg.mod") == "import"


def test_importable_function_and_module_forms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    write_module(
        package / "filt.py",
        """
        def check(args, message):
            return 7
        def process_message_by_module(args, message):
            return 8
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert call(ModuleHost(), spec("f", "mypkg.filt:check")) == 7
    assert call(ModuleHost(), spec("m", "mypkg.filt")) == 8


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("def other(args, message): return 0\n", "has no function process_message_by_module"),
        ("process_message_by_module = 3\n", "has no function process_message_by_module"),
        ("def process_message_by_module(args, message) return 0\n", "SyntaxError"),
        ("import no_such_module_here\n", "ModuleNotFoundError: No module named"),
        ("raise SystemExit(2)\n", "SystemExit: 2"),
    ],
)
def test_modules_that_cannot_load_are_filter_errors(
    tmp_path: Path, source: str, reason: str
) -> None:
    mod = write_module(tmp_path / "broken.py", source)
    with pytest.raises(FilterError, match=reason):
        call(ModuleHost(), spec("broken", str(mod)))


def test_missing_files_and_libraries_are_filter_errors(tmp_path: Path) -> None:
    with pytest.raises(FilterError, match=r"cannot load module .*/nope\.py: FileNotFoundError"):
        call(ModuleHost(), spec("x", str(tmp_path / "nope.py")))
    with pytest.raises(FilterError, match=r"cannot load module .*/nope\.so: .*No such file"):
        call(ModuleHost(), spec("x", str(tmp_path / "nope.so")))
    with pytest.raises(FilterError, match="No module named 'no_such_pkg'"):
        call(ModuleHost(), spec("x", "no_such_pkg.mod:f"))


def test_a_failed_load_is_tried_again_by_the_next_message(tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    mod = write_module(
        tmp_path / "flaky.py",
        f"""
        import os
        def setup(config):
            if not os.path.exists({str(flag)!r}):
                raise ConnectionError("not yet")
        def process_message_by_module(args, message):
            return 4
        """,
    )
    host, filter_spec = ModuleHost(), spec("flaky", str(mod))

    async def go() -> tuple[str, int]:
        try:
            with pytest.raises(FilterError) as first:
                await host.call(filter_spec, [], MSG, kill=False)
            flag.touch()
            return str(first.value), await host.call(filter_spec, [], MSG, kill=False)
        finally:
            await host.close()

    error, second = asyncio.run(go())
    assert error == f"setup of {mod} failed: ConnectionError: not yet" and second == 4


LIFECYCLE = """
import time
LOG = {log!r}
VERSION = {version}
def note(text):
    with open(LOG, "a") as f:
        f.write(text + "\\n")
note("import v%d" % VERSION)
def setup(config):
    note("setup v%d %s %s" % (VERSION, config.filter_name, " ".join(config.args)))
def process_message_by_module(args, message):
    return VERSION
def teardown():
    time.sleep(0.05)  # a teardown that takes a while, as closing a connection may
    note("teardown v%d" % VERSION)
"""


def test_loaded_once_reloaded_when_the_file_changes_unloaded_when_dropped(tmp_path: Path) -> None:
    log = tmp_path / "log"
    mod = tmp_path / "life.py"
    mod.write_text(LIFECYCLE.format(log=str(log), version=1))
    host = ModuleHost()
    config = parse_config_text(
        f'[Filter]\ntask_name = life\nmodule_name = "{mod}"\nexec_cmd = "%f x"\n',
        "/t.conf",
        parse_command_line([]),
    )
    (life,) = config.filters

    async def go() -> list[Any]:
        results = []
        host.configure(config.filters)
        for _ in range(3):
            results.append(await host.call(life, [], MSG, kill=False))
        host.configure(config.filters)  # a reload that changes nothing keeps the module
        results.append(await host.call(life, [], MSG, kill=False))
        mod.write_text(LIFECYCLE.format(log=str(log), version=2))  # same size, same second
        host.configure(config.filters)
        results.append(await host.call(life, [], MSG, kill=False))
        host.configure(())  # the filter left the configuration
        await asyncio.sleep(0.2)
        results.append(list(host.loaded))
        await host.close()
        return results

    assert asyncio.run(go()) == [1, 1, 1, 1, 2, []]
    # strictly in this order: v2 is loaded only once v1 has been torn down
    assert log.read_text().splitlines() == [
        "import v1",
        "setup v1 life %f x",
        "teardown v1",
        "import v2",
        "setup v2 life %f x",
        "teardown v2",
    ]


def test_a_message_of_an_older_configuration_gets_a_one_off_load(tmp_path: Path) -> None:
    log = tmp_path / "log"
    mod = tmp_path / "life.py"
    mod.write_text(LIFECYCLE.format(log=str(log), version=1))
    host, old = ModuleHost(), spec("life", str(mod))

    async def go() -> int:
        host.configure(())
        result: int = await host.call(old, [], MSG, kill=False)
        await host.close()
        return result

    assert asyncio.run(go()) == 1
    assert not host.loaded
    assert log.read_text().splitlines() == ["import v1", "setup v1 life ", "teardown v1"]


SHARED = """
import time
LOG = {log!r}
STATE = {{"open": False}}
def note(text):
    with open(LOG, "a") as f:
        f.write(text + "\\n")
def setup(config):
    note("setup %s %g" % (config.filter_name, config.timeout))
    STATE["open"] = True
def process_message_by_module(args, message):
    if not STATE["open"]:
        raise RuntimeError("used after teardown")
    return 1
def teardown():
    time.sleep(0.05)
    STATE["open"] = False
    note("teardown")
"""


@pytest.fixture
def shared_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """An importable module (one object per process, whoever loads it) and its log."""
    name = f"shared_{uuid.uuid4().hex}"
    log = tmp_path / "log"
    (tmp_path / f"{name}.py").write_text(SHARED.format(log=str(log)))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, log
    sys.modules.pop(name, None)


def test_a_one_off_load_of_an_importable_module_leaves_the_live_one_alone(
    shared_module: tuple[str, Path],
) -> None:
    name, log = shared_module
    host = ModuleHost()
    live, old = spec("shared", name, timeout=5), spec("shared", name, timeout=9)

    async def go() -> list[Any]:
        host.configure([live])
        results = [await host.call(live, [], MSG, kill=False)]
        results.append(await host.call(old, [], MSG, kill=False))  # of an older configuration
        await asyncio.sleep(0.3)  # its one-off runner has been let go by now
        results.append(await host.call(live, [], MSG, kill=False))
        await host.close()
        return results

    assert asyncio.run(go()) == [1, 1, 1]
    assert log.read_text().splitlines() == ["setup shared 5", "teardown"]


def test_a_reload_changing_only_the_timeout_tears_down_before_it_sets_up_again(
    shared_module: tuple[str, Path],
) -> None:
    name, log = shared_module
    host = ModuleHost()
    before, after = spec("shared", name, timeout=5), spec("shared", name, timeout=7)

    async def go() -> list[Any]:
        host.configure([before])
        results = [await host.call(before, [], MSG, kill=False)]
        host.configure([after])  # the old runner is retired; its teardown takes 50 ms
        results.append(await host.call(after, [], MSG, kill=False))
        await asyncio.sleep(0.3)
        results.append(await host.call(after, [], MSG, kill=False))
        await host.close()
        return results

    assert asyncio.run(go()) == [1, 1, 1]
    assert log.read_text().splitlines() == [
        "setup shared 5",
        "teardown",
        "setup shared 7",
        "teardown",
    ]


def test_two_filters_share_an_importable_module_until_the_last_lets_go(
    shared_module: tuple[str, Path],
) -> None:
    name, log = shared_module
    host = ModuleHost()
    one, two = spec("one", name), spec("two", name)

    async def go() -> list[Any]:
        host.configure([one, two])
        results = [
            await host.call(one, [], MSG, kill=False),
            await host.call(two, [], MSG, kill=False),
        ]
        host.configure([two])  # "one" leaves; "two" still uses the module
        await asyncio.sleep(0.3)
        results.append(await host.call(two, [], MSG, kill=False))
        await host.close()
        return results

    assert asyncio.run(go()) == [1, 1, 1]
    assert log.read_text().splitlines() == ["setup one 5", "teardown"]


# --- how calls run ----------------------------------------------------------------------------


def test_plain_functions_run_in_pool_threads_and_async_ones_on_the_loop(tmp_path: Path) -> None:
    for name, prefix in (("sync_mod", "def"), ("async_mod", "async def")):
        write_module(
            tmp_path / f"{name}.py",
            f"""
            import threading
            {prefix} process_message_by_module(args, message):
                return threading.get_ident()
            """,
        )
    host = ModuleHost(threads=2)

    async def go() -> tuple[set[int], int, int]:
        try:
            sync = spec("s", str(tmp_path / "sync_mod.py"))
            asyn = spec("a", str(tmp_path / "async_mod.py"))
            idents = {await host.call(sync, [], MSG, kill=False) for _ in range(20)}
            return idents, await host.call(asyn, [], MSG, kill=False), threading.get_ident()
        finally:
            await host.close()

    idents, async_ident, loop_ident = asyncio.run(go())
    assert async_ident == loop_ident
    assert loop_ident not in idents and 1 <= len(idents) <= 2


def test_thread_pool_reuses_a_bounded_number_of_threads() -> None:
    pool = ThreadPool(3)
    futures = [pool.submit(time.sleep, 0.05) for _ in range(9)]
    names = [pool.submit(lambda: threading.current_thread().name) for _ in range(5)]
    assert [f.result(timeout=5) for f in futures] == [None] * 9
    assert {f.result(timeout=5) for f in names} <= {"module-1", "module-2", "module-3"}
    assert pool.threads == 3
    pool.close()


def test_a_hung_plain_function_times_out_and_is_left_in_its_thread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    release = tmp_path / "release"
    mod = write_module(
        tmp_path / "hang.py",
        f"""
        import os, time
        def process_message_by_module(args, message):
            deadline = time.monotonic() + 10
            while not os.path.exists({str(release)!r}) and time.monotonic() < deadline:
                time.sleep(0.01)
            return 0
        """,
    )
    text = f'[Filter]\ntask_name = hang\ntask_timeout = 0.3\nmodule_name = "{mod}"\n'
    eng = make_engine(tmp_path, text, "-M")

    async def go() -> tuple[Decision, float]:
        started = time.monotonic()
        decision = await eng.run(message(tmp_path))
        seconds = time.monotonic() - started
        release.touch()
        await modules.HOST.close()
        return decision, seconds

    d, seconds = asyncio.run(go())
    state = eng.registry.get("hang")
    assert d.verdict is Verdict.CONTINUE and d.steps[0].outcome == "error:skipped"
    assert 0.3 <= seconds < 2
    reason = (
        "timed out after 0.3s; left running in its thread (-M cannot stop a thread), no verdict"
    )
    assert state.last_error == reason
    assert (state.timeouts, state.kills) == (1, 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert f"filter hang failed: {reason}" in warnings


def test_hung_calls_do_not_hold_up_loading_and_unloading_of_other_modules(tmp_path: Path) -> None:
    release, log = tmp_path / "release", tmp_path / "log"
    hang = write_module(
        tmp_path / "hang.py",
        f"""
        import os, time
        def process_message_by_module(args, message):
            deadline = time.monotonic() + 10
            while not os.path.exists({str(release)!r}) and time.monotonic() < deadline:
                time.sleep(0.01)
        """,
    )
    other = write_module(
        tmp_path / "other.py",
        f"""
        def note(text):
            with open({str(log)!r}, "a") as f:
                f.write(text + "\\n")
        def setup(config):
            note("setup")
        async def process_message_by_module(args, message):
            return 3
        def teardown():
            note("teardown")
        """,
    )
    host = ModuleHost(threads=1)
    hung, second = spec("hang", str(hang), timeout=0.2), spec("other", str(other), timeout=2)

    async def go() -> tuple[int, list[str]]:
        try:
            host.configure([hung, second])
            with pytest.raises(FilterError, match=r"timed out after 0\.2s"):
                await host.call(hung, [], MSG, kill=False)  # holds the only call thread
            result = await host.call(second, [], MSG, kill=False)  # setup: a plain function
            host.configure([hung])
            for _ in range(200):
                if "teardown" in log.read_text():
                    break
                await asyncio.sleep(0.01)
            return result, log.read_text().splitlines()
        finally:
            release.touch()
            await host.close()

    assert asyncio.run(go()) == (3, ["setup", "teardown"])


def test_a_hung_async_function_is_cancelled_with_dash_m_and_left_without(tmp_path: Path) -> None:
    marker = tmp_path / "finished"
    mod = write_module(
        tmp_path / "slow.py",
        f"""
        import asyncio, pathlib
        async def process_message_by_module(args, message):
            await asyncio.sleep(0.6)
            pathlib.Path({str(marker)!r}).write_text(args[0])
            return 1
        """,
    )
    host = ModuleHost()
    slow = spec("slow", str(mod), timeout=0.2)

    async def go(kill: bool) -> str:
        try:
            with pytest.raises(FilterError) as error:
                await host.call(slow, ["late" if not kill else "cancelled"], MSG, kill=kill)
            await asyncio.sleep(0.8)
            return str(error.value)
        finally:
            await host.close()

    assert asyncio.run(go(True)) == "timed out after 0.2s and was cancelled"
    assert not marker.exists()
    assert asyncio.run(go(False)) == "timed out after 0.2s; left running as a task, no verdict"
    assert marker.read_text() == "late"


# --- C shared libraries -------------------------------------------------------------------------

ECHO_C = """
#include <stdio.h>
#include <stdlib.h>
#include "milter_agent_module.h"
/* argv[1] is a reply file: write every argument there, return argv[2] as the exit code */
int process_message_by_module(int argc, char **argv)
{
    FILE *reply = fopen(argv[1], "w");
    for (int i = 0; i < argc; i++)
        fprintf(reply, "%d=%s\\n", i, argv[i]);
    fclose(reply);
    return atoi(argv[2]) + VERSION;
}
"""


def test_c_module_gets_argc_argv_and_its_result_reads_like_an_exit_code(tmp_path: Path) -> None:
    lib = compile_c(tmp_path, "echo", "#define VERSION 0\n" + ECHO_C)
    _, d = run(
        tmp_path,
        f"""
        [Filter]
        task_name = echo
        module_name = "{lib}"
        exec_cmd = "%r 3 %{{queue_id}}"
        reject_exit_codes = "3"
        """,
    )
    assert d.verdict is Verdict.REJECT and d.reply is not None
    assert d.reply.lines[0] == f"0={lib}"
    assert d.reply.lines[2:] == ("2=3", "3=QID42")


def test_a_c_function_runs_off_the_event_loop(tmp_path: Path) -> None:
    lib = compile_c(
        tmp_path,
        "where",
        """
        #include <pthread.h>
        #include <stdio.h>
        #include <unistd.h>
        #include "milter_agent_module.h"
        int process_message_by_module(int argc, char **argv)
        {
            FILE *out = fopen(argv[1], "w");
            fprintf(out, "%lu\\n", (unsigned long)pthread_self());
            fclose(out);
            usleep(300000);
            return argc;
        }
        """,
    )
    out = tmp_path / "thread"
    host = ModuleHost()

    async def go() -> tuple[int, int, int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        try:
            result = await host.call(spec("where", str(lib)), [str(out)], MSG, kill=False)
            return result, ticks, threading.get_ident()
        finally:
            ticker.cancel()
            await host.close()

    result, ticks, loop_thread = asyncio.run(go())
    assert result == 2
    assert int(out.read_text()) != loop_thread
    assert ticks >= 10  # the loop went on while the C function slept


def test_c_module_is_dlclosed_and_a_new_version_loaded_on_reload(tmp_path: Path) -> None:
    build = tmp_path / "build"
    build.mkdir()
    installed = tmp_path / "echo.so"
    compile_c(build, "echo", "#define VERSION 10\n" + ECHO_C).rename(installed)
    reply = tmp_path / "reply"
    host, echo = ModuleHost(), spec("echo", str(installed))

    async def go() -> list[int]:
        host.configure([echo])
        first = await host.call(echo, [str(reply), "1"], MSG, kill=False)
        compile_c(build, "echo", "#define VERSION 20\n" + ECHO_C).rename(installed)
        host.configure([echo])
        second = await host.call(echo, [str(reply), "1"], MSG, kill=False)
        await host.close()
        return [first, second]

    assert asyncio.run(go()) == [11, 21]
    maps = Path("/proc/self/maps").read_text()
    assert str(installed) not in maps  # dlclose really unmapped every version


def test_a_c_library_without_the_function_is_a_filter_error(tmp_path: Path) -> None:
    lib = compile_c(tmp_path, "empty", "int something_else(void) { return 0; }\n")
    with pytest.raises(FilterError, match="has no function process_message_by_module"):
        load_module(str(lib))
    assert str(lib) not in Path("/proc/self/maps").read_text()


def test_make_modules_builds_the_c_sample_and_it_runs(tmp_path: Path) -> None:
    subprocess.run(  # the top-level target, which hands BUILD on to modules/Makefile
        ["make", "-s", "-C", str(REPO), "modules", f"BUILD={tmp_path}"], check=True, timeout=60
    )
    lib = tmp_path / "module_dummy.so"
    spool_file = tmp_path / "m.eml"
    spool_file.write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    assert call(ModuleHost(), spec("dummy", str(lib)), [str(spool_file)]) == 0
    assert call(ModuleHost(), spec("dummy", str(lib)), [str(tmp_path / "missing")]) == 75


# --- normalising ----------------------------------------------------------------------------------


def test_none_is_zero_and_results_become_plain_tuples_and_bytes() -> None:
    assert normalize_outcome(None) == 0
    plain = normalize_outcome(
        ModuleResult(add_headers=[["X-A", "1"]], remove_headers=["B"], new_body="é")  # type: ignore[list-item]
    )
    assert plain == ModuleResult(
        add_headers=(("X-A", "1"),), remove_headers=("B",), new_body="é".encode()
    )
    with pytest.raises(FilterError, match="must be a sequence of strings, not one string"):
        normalize_outcome(ModuleResult(remove_headers="Subject"))
