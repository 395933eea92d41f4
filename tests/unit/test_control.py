"""The control socket: peer credentials decide who is served; answers and ma-client output."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shlex
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from milter_agent.config.parser import parse_config_text
from milter_agent.control import client, protocol, stats
from milter_agent.control.metrics import DaemonCollector, Snapshot
from milter_agent.control.server import ControlServer
from milter_agent.engine import Engine
from milter_agent.registry import FilterState, Registry
from milter_agent.spool import Spool
from support.procs import as_user
from support.util import public_tmpdir

NOBODY = pwd.getpwnam("nobody")
ADMIN_GID = 4242  # a group id nobody is not in, unless the test gives it


@pytest.fixture
def public_dir() -> Iterator[Path]:
    with public_tmpdir("ma-ctl-") as path:
        yield path


def as_nobody(path: str, groups: list[int]) -> tuple[str, int]:
    """Ask the control socket from a child process running as nobody; (answer, client code)."""
    return as_user(NOBODY, lambda: client.ask(path, "status", timeout=5), groups)


def serve_and_ask(directory: Path, groups: list[int], admin_gid: int | None) -> tuple[str, int]:
    async def go() -> tuple[str, int]:
        path = str(directory / "cmd")
        server = ControlServer(path, {"status": lambda _args: {"up": True}}, admin_gid=admin_gid)
        await server.start()
        os.chmod(path, 0o666)  # let the file system allow it: the peer check must refuse
        try:
            return await asyncio.get_running_loop().run_in_executor(None, as_nobody, path, groups)
        finally:
            await server.stop()

    return asyncio.run(go())


def test_other_user_is_refused(public_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    answer, code = serve_and_ask(public_dir, [], ADMIN_GID)
    assert (answer, code) == ("permission denied", client.EXIT_DENIED)
    assert "control socket: refused pid" in caplog.text and f"uid {NOBODY.pw_uid}" in caplog.text


def test_member_of_admin_group_is_served(public_dir: Path) -> None:
    answer, code = serve_and_ask(public_dir, [ADMIN_GID], ADMIN_GID)
    assert code == 0 and json.loads(answer) == {"up": True}


def test_root_is_served_and_errors_are_answers(public_dir: Path) -> None:
    async def go() -> None:
        path = str(public_dir / "cmd")
        handlers = {
            "status": lambda _a: {"up": True},
            "enable": lambda a: (_ for _ in ()).throw(ValueError(f"no filter named {a[0]!r}")),
        }
        server = ControlServer(path, handlers)
        await server.start()
        loop = asyncio.get_running_loop()
        try:
            assert await loop.run_in_executor(None, client.ask, path, "status") == {"up": True}
            with pytest.raises(client.ClientError, match="no filter named 'x'") as caught:
                await loop.run_in_executor(None, client.ask, path, "enable", "x")
            assert caught.value.code == client.EXIT_REFUSED
            with pytest.raises(client.ClientError, match="unknown command"):
                await loop.run_in_executor(None, client.ask, path, "nonsense")
        finally:
            await server.stop()

    asyncio.run(go())


def test_missing_daemon_and_usage_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert client.main([str(tmp_path / "nothing-here"), "status"]) == client.EXIT_NO_DAEMON
    assert "no control socket at" in capsys.readouterr().err
    assert client.main([str(tmp_path / "x"), "frobnicate"]) == client.EXIT_USAGE


def test_tables_are_aligned() -> None:
    rows = [
        {"name": "a", "runs": 1, "verdicts": {"continue": 1}},
        {"name": "longer", "runs": 20, "verdicts": {}},
    ]
    assert client.table(rows, ("name", "runs", "verdicts")).splitlines() == [
        "NAME    RUNS  VERDICTS",
        "a       1     continue=1",
        "longer  20    -",
    ]


# --- the protocol: version field, error codes, failures inside the daemon ----------------------


def raw_exchange(path: str, request: bytes) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(request)
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            assert chunk, f"EOF before a whole answer: {data!r}"
            data += chunk
    answer = json.loads(data)
    assert isinstance(answer, dict)
    return answer


def broken(_args: list[str]) -> object:
    raise RuntimeError("a bug behind the command")


def test_every_answer_carries_the_protocol_version_and_a_code_on_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> list[dict[str, object]]:
        path = str(tmp_path / "cmd")
        server = ControlServer(path, {"status": lambda _a: {"up": True}, "filters": broken})
        await server.start()
        loop = asyncio.get_running_loop()
        requests = [
            protocol.request("status"),
            b"not json\n",
            b'{"command": "status", "args": 5}\n',
            protocol.request("nonsense"),
            protocol.request("filters"),
            protocol.request("status"),  # still served after the failure
        ]
        try:
            return [await loop.run_in_executor(None, raw_exchange, path, r) for r in requests]
        finally:
            await server.stop()

    answers = asyncio.run(go())
    assert all(a["version"] == protocol.VERSION == 1 for a in answers)
    assert answers[0] == {"version": 1, "ok": True, "data": {"up": True}}
    assert [a.get("code") for a in answers[1:5]] == [
        "bad_request",
        "bad_request",
        "unknown_command",
        "internal_error",
    ]
    assert "RuntimeError('a bug behind the command')" in str(answers[4]["error"])
    assert answers[5]["ok"] is True
    assert "control socket: command filters failed" in caplog.text
    assert "Traceback" in caplog.text


def test_internal_error_has_its_own_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def go() -> int:
        path = str(tmp_path / "cmd")
        server = ControlServer(path, {"filters": broken})
        await server.start()
        try:
            return await asyncio.get_running_loop().run_in_executor(None, client.main, [path, "2"])
        finally:
            await server.stop()

    assert asyncio.run(go()) == client.EXIT_INTERNAL == 6
    assert capsys.readouterr().err.startswith("ma-client: internal error: RuntimeError(")


# --- ma-client: exit codes -----------------------------------------------------------------------


def test_a_daemon_that_never_answers_gives_exit_5_in_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "cmd")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)  # connections are queued, never accepted, never answered
        started = time.monotonic()
        code = client.main([path, "status", "--timeout", "0.5"])
        elapsed = time.monotonic() - started
    assert code == client.EXIT_TIMEOUT == 5
    assert capsys.readouterr().err == f"ma-client: no answer from {path} within 0.5s\n"
    assert 0.4 < elapsed < 3


def test_the_timeout_bounds_the_whole_exchange_not_each_read(tmp_path: Path) -> None:
    """A peer sending a byte every 0.1 s never lets one recv time out; the client still
    gives up when its time is over."""
    path = str(tmp_path / "cmd")
    stop = threading.Event()

    def dribble(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with conn:
            while not stop.wait(0.1):
                conn.sendall(b" ")

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        peer = threading.Thread(target=dribble, args=(listener,), daemon=True)
        peer.start()
        started = time.monotonic()
        try:
            with pytest.raises(client.ClientError) as caught:
                client.ask(path, "status", timeout=0.6)
        finally:
            stop.set()
            peer.join(5)
    assert caught.value.code == client.EXIT_TIMEOUT
    assert time.monotonic() - started < 3


def test_file_system_refusal_gives_exit_4(public_dir: Path) -> None:
    """The socket file's mode refuses nobody before the daemon sees the peer at all."""

    async def go() -> tuple[str, int]:
        path = str(public_dir / "cmd")
        server = ControlServer(path, {"status": lambda _args: {"up": True}})
        await server.start()  # mode 0660, owned by root: nobody may not connect
        try:
            return await asyncio.get_running_loop().run_in_executor(None, as_nobody, path, [])
        finally:
            await server.stop()

    answer, code = asyncio.run(go())
    assert code == client.EXIT_DENIED == 4
    assert answer == f"access to {public_dir / 'cmd'} refused"


def test_a_refused_reload_exits_1_with_the_error_on_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    error = "/etc/x.conf:3: task_nme: unknown key\n/etc/x.conf:4: frobnicate: unknown key"
    reloaded = {"reloaded": False, "error": error}

    async def go(*words: str) -> int:
        path = str(tmp_path / "cmd")
        server = ControlServer(path, {"reload": lambda _args: reloaded})
        await server.start()
        try:
            return await asyncio.get_running_loop().run_in_executor(
                None, client.main, [path, "reload", *words]
            )
        finally:
            await server.stop()

    assert asyncio.run(go()) == client.EXIT_REFUSED
    out, err = capsys.readouterr()
    assert err == (
        "ma-client: reload refused, the old configuration stays: "
        "/etc/x.conf:3: task_nme: unknown key; /etc/x.conf:4: frobnicate: unknown key\n"
    )
    assert out.splitlines()[0] == "reloaded  False"
    assert asyncio.run(go("--json")) == client.EXIT_REFUSED
    out, err = capsys.readouterr()
    assert json.loads(out) == reloaded and err.count("\n") == 1


# --- ma-client: plain-text output -----------------------------------------------------------------


def test_times_modes_and_multi_line_values_in_key_value_output() -> None:
    when = 1_800_000_000.0
    text = client.render(
        "status",
        {
            "config_loaded_at": when,
            "last_reload_error": "line 3: bad\nline 4: worse",
            "socket_mode": 0o660,
            "messages": 3,
        },
    )
    assert text.splitlines() == [
        f"config_loaded_at   {protocol.local_time(when)}",
        "last_reload_error  line 3: bad",
        "                   line 4: worse",
        "socket_mode        0660",
        "messages           3",
    ]
    assert datetime.fromisoformat(protocol.local_time(when)).timestamp() == when


def test_filters_output_shows_configuration_then_statistics() -> None:
    row = {
        "name": "scan",
        "kind": "program",
        "mode": "normal",
        "timeout": 60.0,
        "single_instance": 1,
        "line": 4,
        "command": "/usr/bin/scan --say 'hello world' %f",
        "runs": 3,
        "skipped": 0,
        "verdicts": {"continue": 2, "reject": 1},
        "errors": 2,
        "timeouts": 0,
        "queue_timeouts": 4,
        "kills": 0,
        "running": 1,
        "waiting": 2,
        "mean_ms": 1.5,
        "p95_ms": 2.0,
        "max_ms": 2.0,
        "last_run": 1_800_000_000.0,
        "disabled": True,
        "disabled_reason": "2 errors (threshold 2); last: killed\nby signal",
        "last_error": "killed by signal SIGKILL",
    }
    config, stats_table = client.render("filters", [row]).split("\n\n")
    assert config.splitlines() == [
        "NAME  KIND     MODE    TIMEOUT  INSTANCES  LINE  COMMAND",
        "scan  program  normal  60.0     1          4     /usr/bin/scan --say 'hello world' %f",
    ]
    heading, line = stats_table.splitlines()
    assert heading.split() == [
        "NAME", "RUNS", "SKIPPED", "VERDICTS", "ERRORS", "TIMEOUTS", "QUEUE_TIMEOUTS", "KILLS",
        "RUNNING", "WAITING", "MEAN_MS", "P95_MS", "MAX_MS", "LAST_RUN", "DISABLED", "WHY",
        "LAST_ERROR",
    ]  # fmt: skip
    assert line.split(maxsplit=15) == [
        "scan", "3", "0", "continue=2,reject=1", "2", "0", "4", "0", "1", "2", "1.5", "2.0", "2.0",
        protocol.local_time(1_800_000_000.0), "True",
        "2 errors (threshold 2); last: killed; by signal  killed by signal SIGKILL",
    ]  # fmt: skip
    assert heading.index("WHY") == line.index("2 errors")  # aligned
    assert heading.index("LAST_ERROR") == line.index("killed by signal SIGKILL")


# --- statistics -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "expected_ms"),
    [(1, 1.0), (19, 19.0), (20, 19.0), (21, 20.0), (100, 95.0), (1000, 950.0)],
)
def test_p95_is_the_nearest_rank(count: int, expected_ms: float) -> None:
    """Of 1..N ms, p95 is the ceil(0.95 N)-th value: 95 of 100, 19 of 20, 20 of 21."""
    state = FilterState("scan")
    for ms in range(1, count + 1):
        state.observe(ms / 1000)
    data = stats.state_data(state)
    assert data["p95_ms"] == expected_ms
    assert data["max_ms"] == float(count)
    assert data["mean_ms"] == round((count + 1) / 2, 2)


def scrape(snapshot: Snapshot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape as {(name, sorted labels): value}, through the text parser."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(DaemonCollector(lambda: snapshot))
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }


def snapshot_of(*filters: tuple[str, FilterState]) -> Snapshot:
    return Snapshot({}, 0, 0, 0, 1, True, 1.0, filters=list(filters))


def test_queue_timeouts_are_shown_apart_from_timeouts_and_reset() -> None:
    state = FilterState("scan")
    state.timeouts, state.queue_timeouts = 2, 3
    data = stats.state_data(state)
    assert (data["timeouts"], data["queue_timeouts"]) == (2, 3)
    samples = scrape(snapshot_of(("scan", state)))
    scan = (("filter", "scan"), ("mode", "enforce"))
    assert samples[("milter_agent_filter_timeouts_total", scan)] == 2
    assert samples[("milter_agent_filter_queue_timeouts_total", scan)] == 3
    state.reset()
    assert (state.timeouts, state.queue_timeouts) == (0, 0)


def test_every_filter_series_has_the_filters_mode_as_set_by_the_engine(tmp_path: Path) -> None:
    text = (
        "[Filter]\ntask_name = scan\nexec_cmd = /bin/true\n"
        "[Filter]\ntask_name = trial\nexec_cmd = /bin/true\nmode = monitor\n"
    )
    registry = Registry()
    Engine(parse_config_text(text), registry, Spool(tmp_path))
    scan, trial = registry.get("scan"), registry.get("trial")
    scan.record_run("continue", 0.01)
    trial.record_run("monitor:reject", 0.01)
    samples = scrape(snapshot_of(("scan", scan), ("trial", trial)))
    modes = {"scan": "enforce", "trial": "monitor"}
    filter_series = [dict(labels) for name, labels in samples if "_filter_" in name]
    assert filter_series and all(modes[s["filter"]] == s["mode"] for s in filter_series)
    runs = "milter_agent_filter_runs_total"
    trial_rejects = (("filter", "trial"), ("mode", "monitor"), ("verdict", "monitor:reject"))
    assert samples[(runs, trial_rejects)] == 1
    Engine(parse_config_text(text.replace("mode = monitor\n", "")), registry, Spool(tmp_path))
    assert trial.mode == "enforce"  # the engine of a reload sets it anew


def test_address_rules_show_their_time_conditions() -> None:
    text = (
        '[Address]\ntask_name = office\nrun_time = "* 8-17 * * mon-fri"\n'
        'skip_time = "0-29 12 * * *"\nskip_time = "0,30 * 25 dec *"\nadd_recipient = w\n'
        "[Address]\ntask_name = always\nadd_recipient = w\n"
    )
    office, always = stats.addresses(parse_config_text(text), Registry())
    assert office["run_time"] == ["* 8-17 * * mon-fri"]
    assert office["skip_time"] == ["0-29 12 * * *", "0,30 * 25 dec *"]
    assert (always["run_time"], always["skip_time"]) == ([], [])
    heading, first, second = client.render("addresses", [office, always]).splitlines()
    assert heading.index("RUN_TIME") == first.index("* 8-17 * * mon-fri")
    assert heading.index("SKIP_TIME") == first.index("0-29 12 * * *; 0,30 * 25 dec *")
    assert second.split()[:5] == ["always", "-", "-", "-", "-"]


def test_command_is_shown_as_shell_words() -> None:
    config = parse_config_text(
        "[Filter]\ntask_name = scan\nexec_cmd = \"/usr/bin/scan --say 'hello world' %f\"\n"
    )
    (row,) = stats.filters(config, Registry())
    assert row["command"] == "/usr/bin/scan --say 'hello world' %f"
    assert shlex.split(row["command"])[2] == "hello world"


def test_one_line_joins_a_list_of_errors_after_its_heading() -> None:
    text = "/x.conf: 2 errors:\n  /x.conf:3: a: unknown key\n\n  /x.conf:4: b: unknown key\n"
    assert (
        protocol.one_line(text)
        == "/x.conf: 2 errors: /x.conf:3: a: unknown key; /x.conf:4: b: unknown key"
    )
    assert (
        protocol.one_line(text, 2)
        == "/x.conf: 2 errors: /x.conf:3: a: unknown key; ... (1 more lines)"
    )


def test_a_path_that_is_no_socket_is_one_line_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "plain").write_text("")
    assert client.main([str(tmp_path / "plain"), "status"]) == client.EXIT_NO_DAEMON
    assert client.main([str(tmp_path / "plain" / "cmd"), "status"]) == client.EXIT_NO_DAEMON
    assert capsys.readouterr().err.splitlines() == [
        f"ma-client: no daemon listening at {tmp_path / 'plain'}",
        f"ma-client: {tmp_path / 'plain' / 'cmd'}: Not a directory",
    ]
