"""The private Sendmail itself: it starts on loopback, relays to the sink, logs, keeps the
machine's /etc/hosts and /dev as they were, and with F=T tempfails while the milter is down."""

from __future__ import annotations

import os
from pathlib import Path

from support.sendmail import SendmailInstance, sendmail_queue_id
from support.sink import SmtpSink
from support.smtp import build_message, send_message
from support.util import free_port


def test_relays_to_the_sink_without_a_milter(sendmail: SendmailInstance, sink: SmtpSink) -> None:
    host, port = sendmail.address
    assert host == "127.0.0.1" and port > 0
    result = send_message(sendmail.address, "a@example.org", ["b@example.net"], build_message())
    assert result.accepted, result
    queue_id = sendmail_queue_id(result.text)
    assert queue_id, result.text
    (msg,) = sink.wait_for(1)
    assert (msg.mail_from, msg.rcpt_tos) == ("a@example.org", ["b@example.net"])
    sendmail.wait_for_log(rf"{queue_id}: to=<b@example.net>.*stat=Sent")
    assert f"{queue_id}: from=<a@example.org>" in sendmail.log_text()
    assert "<<< mail FROM:<a@example.org>" in sendmail.transactions_text()  # as smtplib sends it
    sendmail.wait_drained(10)


def test_the_machine_keeps_its_hosts_file_and_dev(sendmail: SendmailInstance) -> None:
    # The private /etc/hosts and /dev exist only in Sendmail's mount namespace.
    assert Path("/etc/hosts").read_text() != (sendmail.root / "hosts").read_text()
    assert not os.path.lexists("/dev/log") or not os.readlink("/dev/log").startswith(
        str(sendmail.root)
    )
    pid = sendmail.pid
    assert pid is not None
    assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")


def test_milter_down_with_f_t_means_tempfail_never_unfiltered(
    sendmail: SendmailInstance, sink: SmtpSink
) -> None:
    nobody = free_port()  # nothing listens there
    sendmail.set_milter(f"inet:{nobody}@127.0.0.1")
    result = send_message(sendmail.address, "a@example.org", ["b@example.net"], build_message())
    # Sendmail still greets; it refuses from MAIL FROM on (Postfix: 451 4.3.5 from CONNECT on).
    assert (result.stage, result.code, result.text) == ("mail", 451, "4.3.2 Please try again later")
    sink.assert_quiet(0.3)
    assert sendmail.queue_count() == 0


def test_a_second_instance_stops_without_leftovers(sink_session: SmtpSink, tmp_path: Path) -> None:
    with SendmailInstance(sink_session.address, parent_dir=tmp_path) as inst:
        assert inst.processes()
        first_port = inst.port
        inst.restart()
        assert inst.port == first_port and inst.running()
    assert inst.processes() == []
    assert not inst.running()
