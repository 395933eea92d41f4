"""Settings of the running daemon, seen from the MTA's side of the socket: the milter actions
negotiated for the -A -R -H -G -B switches, before and after a reload that changes them; the -I
log line; settings a reload changes without a restart (io_timeout, log_tempfile); the -a lock
wait of a reload that never stalls the messages in flight; restart-only settings warned about.

No Postfix here: the MTA is the test's own client (tests/faults/faultkit.py), over a Unix socket.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from faults.faultkit import MilterClient, message_commands, status
from milter_agent import protocol as p
from milter_agent.control import client as control_client
from milter_agent.protocol.constants import Action
from support.daemon import MilterAgentDaemon
from support.util import wait_until

Agent = Callable[..., MilterAgentDaemon]
STAMP = '[Address]\ntask_name = stamp\nadd_header_name = "X-Stamp"\nadd_header_value = "1"\n'
#: A filter that reads the message, so that it is written to the spool (-I logs that file).
READER = '[Filter]\ntask_name = reader\nexec_cmd = "/bin/cat %f"\n'


def negotiated_actions(agent: MilterAgentDaemon) -> Action:
    """The actions the daemon asks for in its OPTNEG reply to a Postfix-like offer."""
    with MilterClient(agent.socket_spec) as mta:
        ((command, payload),) = mta.command(p.OptNeg(6, Action(0x1FF), p.ProtocolFlag(0x1FFFFF)))
    assert command == b"O"
    _version, actions, _protocol = struct.unpack(">III", payload[:12])
    return Action(actions) & ~Action.SETSYMLIST  # the macro list request, not a change


def reload_and_wait(agent: MilterAgentDaemon, text: str, sig: signal.Signals) -> None:
    generation = status(agent)["config_generation"]
    agent.config.write_text(text)
    agent.send_signal(sig)
    wait_until(
        lambda: status(agent)["config_generation"] != generation,
        10,
        interval=0.05,
        message=lambda: agent.log_text()[-3000:],
    )


@pytest.mark.parametrize(
    ("switches", "expected"),
    [
        ("-H", Action.ADDHDRS),
        ("-G", Action.CHGHDRS),
        ("-A", Action.ADDRCPT),
        ("-R", Action.DELRCPT),
        ("-B", Action.CHGBODY),
        ("-HG", Action.ADDHDRS | Action.CHGHDRS),
        (
            "-1B",
            Action.ADDHDRS | Action.CHGHDRS | Action.ADDRCPT | Action.DELRCPT | Action.CHGBODY,
        ),
    ],
)
def test_negotiated_actions_follow_the_switches(
    milter_agent: Agent, switches: str, expected: Action
) -> None:
    agent = milter_agent(STAMP, extra_args=[switches])
    assert negotiated_actions(agent) == expected


def test_nothing_allowed_asks_for_no_change(milter_agent: Agent) -> None:
    agent = milter_agent(STAMP)
    assert negotiated_actions(agent) == Action.NONE


def test_a_reload_changes_the_actions_of_new_connections(milter_agent: Agent) -> None:
    agent = milter_agent(STAMP, extra_args=["-H"])
    assert negotiated_actions(agent) == Action.ADDHDRS
    with MilterClient(agent.socket_spec) as before:  # connected before the reload
        before.handshake()
        reload_and_wait(
            agent, "allow_change_header = yes\nallow_add_recipient = yes\n" + STAMP, signal.SIGHUP
        )
        assert negotiated_actions(agent) == Action.ADDHDRS | Action.CHGHDRS | Action.ADDRCPT
        assert before.message()[-1] == (b"c", b"")  # the old connection goes on as it was
    # the command line wins over the file: -H stays whatever the file says
    reload_and_wait(agent, "allow_add_header = no\n" + STAMP, signal.SIGUSR1)
    assert negotiated_actions(agent) == Action.ADDHDRS


def spool_lines(agent: MilterAgentDaemon) -> list[tuple[str, str, int]]:
    found = re.findall(r"(\S+): spool file (\S+) size (\d+)$", agent.log_text(), re.M)
    return [(queue_id, path, int(size)) for queue_id, path, size in found]


def test_log_tempfile_names_the_spool_file_and_its_size(milter_agent: Agent) -> None:
    agent = milter_agent(READER, extra_args=["-I"])
    body = b"line one\r\n" * 50
    with MilterClient(agent.socket_spec) as mta:
        mta.handshake()
        commands = message_commands(body=body, queue_id="QIDSPOOL")
        assert mta.message(commands)[-1] == (b"c", b"")
    wait_until(lambda: spool_lines(agent), 10, message=agent.log_text)
    ((queue_id, path, size),) = spool_lines(agent)
    assert queue_id == "QIDSPOOL"
    assert Path(path).parent == agent.spool_dir / "messages" and path.endswith(".msg")
    headers = b"From: <a@example.org>\r\nSubject: hello\r\n\r\n"
    assert size == len(headers) + len(body)
    assert size == status(agent)["bytes"]  # the same size the daemon counts for the message
    assert not Path(path).exists()  # removed when the message was done


def test_log_tempfile_and_io_timeout_follow_a_reload(milter_agent: Agent) -> None:
    agent = milter_agent(READER)
    with MilterClient(agent.socket_spec) as mta:
        mta.handshake()
        assert mta.message(message_commands(queue_id="QIDOFF"))[-1] == (b"c", b"")
    reload_and_wait(agent, "log_tempfile = yes\nio_timeout = 1\n" + READER, signal.SIGHUP)
    assert "setting" not in agent.log_text()  # both apply without a restart
    with MilterClient(agent.socket_spec) as mta:
        mta.handshake()
        assert mta.message(message_commands(queue_id="QIDON"))[-1] == (b"c", b"")
        started = time.monotonic()
        mta.wait_closed(timeout=10)  # idle: closed by the daemon after io_timeout
        assert time.monotonic() - started < 5
    assert [line[0] for line in spool_lines(agent)] == ["QIDON"]
    agent.wait_for_log("no data from the MTA for 1.0s")


def test_restart_only_settings_are_warned_about(milter_agent: Agent, tmp_path: Path) -> None:
    agent = milter_agent(STAMP)
    text = f"metrics = 127.0.0.1:1\nadmin_group = root\npid_file = {tmp_path}/x.pid\n" + STAMP
    reload_and_wait(agent, text, signal.SIGHUP)
    for key in ("metrics", "admin_group", "pid_file"):
        agent.wait_for_log(f"setting {key} changed; it takes effect at the next restart")
    assert not (tmp_path / "x.pid").exists()


def test_a_locked_config_is_waited_for_while_messages_go_on(milter_agent: Agent) -> None:
    """-a: a reload waits for the editor's exclusive lock in a worker thread; meanwhile the
    daemon answers messages and the control socket at once, and reads the new file as soon as
    the lock is released."""
    agent = milter_agent(STAMP, extra_args=["-a", "-F", "-H"])
    new_text = STAMP.replace("stamp", "stamp2")
    with open(agent.config, "r+b") as editor:
        fcntl.flock(editor.fileno(), fcntl.LOCK_EX)
        editor.truncate()
        editor.write(new_text.encode())
        editor.flush()
        os.utime(editor.fileno(), ns=(time.time_ns(), time.time_ns() + 10**9))
        time.sleep(1.5)  # the watcher has seen the change and is waiting for the lock
        for _ in range(3):
            started = time.monotonic()
            with MilterClient(agent.socket_spec, timeout=5) as mta:
                mta.handshake()
                assert mta.message()[-1] == (b"c", b"")
            assert time.monotonic() - started < 1.0
            assert status(agent)["config_generation"] == 1
        started = time.monotonic()
        answer = control_client.ask(agent.control_spec, "reload", timeout=10)
        assert time.monotonic() - started < 1.0  # the control socket does not wait either
        assert isinstance(answer, dict) and answer["reloaded"] is False
        assert "locked by another process: it is read as soon as the lock is released" in str(
            answer["error"]
        )
        fcntl.flock(editor.fileno(), fcntl.LOCK_UN)
        released = time.monotonic()
    wait_until(lambda: status(agent)["config_generation"] == 2, 10, message=agent.log_text)
    assert time.monotonic() - released < 3
    assert "refused" not in agent.log_text()
    assert status(agent)["last_reload_error"] is None
