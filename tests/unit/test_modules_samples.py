"""The sample modules shipped in milter_agent.modules: dummy, sample, html_mail, mail_archive."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest

from milter_agent.config.model import FilterSpec
from milter_agent.errors import FilterError
from milter_agent.filters.module import ModuleHost
from milter_agent.filters.module_api import ModuleMessage, ModuleResult
from milter_agent.modules import html_mail, mail_archive


def message_file(tmp_path: Path, mail: EmailMessage) -> ModuleMessage:
    path = tmp_path / "m.eml"
    path.write_bytes(mail.as_bytes(policy=mail.policy.clone(linesep="\r\n")))
    headers = tuple((name, str(value)) for name, value in mail.items())
    return ModuleMessage(
        "a@example.org", ("b@example.net",), headers, {"i": "4XyZ"}, queue_id="4XyZ", path=path
    )


def text_mail() -> EmailMessage:
    mail = EmailMessage()
    mail["Subject"] = "plain"
    mail.set_content("just text\n")
    return mail


def run_module(name: str, args: list[str], message: ModuleMessage) -> object:
    host = ModuleHost()
    spec = FilterSpec(name="sample", argv=(), module_name=name)

    async def go() -> object:
        try:
            return await host.call(spec, args, message, kill=False)
        finally:
            await host.close()

    return asyncio.run(go())


def test_dummy_continues(tmp_path: Path) -> None:
    assert run_module("milter_agent.modules.dummy", [], message_file(tmp_path, text_mail())) == 0


def test_sample_logs_load_message_and_unload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    result = run_module("milter_agent.modules.sample", ["x"], message_file(tmp_path, text_mail()))
    assert result == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "milter_agent.modules.sample"]
    assert lines == [
        "sample module loaded for filter sample",
        "sample module: 4XyZ from <a@example.org> to 1 recipient(s), 0 bytes, subject 'plain', "
        "args x",
        "sample module unloaded",
    ]


def html_only() -> EmailMessage:
    mail = EmailMessage()
    mail.set_content("<p>hi</p>", subtype="html")
    return mail


def alternative() -> EmailMessage:
    mail = text_mail()
    mail.add_alternative("<p>just text</p>", subtype="html")
    return mail


def with_attachment(kind: str) -> EmailMessage:
    mail = text_mail()
    if kind == "pdf":
        mail.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf", filename="a.pdf")
    else:
        mail.add_attachment("notes\n", filename="notes.txt")
    return mail


@pytest.mark.parametrize(
    ("mail", "verdict"),
    [
        (text_mail(), "continue"),
        (alternative(), "continue"),
        (html_only(), "reject"),
        (with_attachment("pdf"), "reject"),
        (with_attachment("text file"), "reject"),
    ],
)
def test_html_mail_rejects_html_only_and_attachments(
    tmp_path: Path, mail: EmailMessage, verdict: str
) -> None:
    result = run_module("milter_agent.modules.html_mail", [], message_file(tmp_path, mail))
    assert isinstance(result, ModuleResult) and result.verdict == verdict
    assert result.text == (html_mail.REJECT_TEXT if verdict == "reject" else "")


def test_mail_archive_copies_each_message_atomically_under_a_date_name(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    message = message_file(tmp_path, text_mail())
    assert message.path is not None
    for _ in range(3):
        args = [str(message.path), str(archive)]
        assert run_module("milter_agent.modules.mail_archive", args, message) == 0
    stored = sorted(os.listdir(archive))
    assert len(stored) == 3 and len(set(stored)) == 3
    today = datetime.now(UTC).strftime("%Y%m%dT")
    assert all(name.startswith(today) and "-4XyZ-" in name for name in stored)
    assert all((archive / name).read_bytes() == message.path.read_bytes() for name in stored)


def test_mail_archive_flushes_the_copy_and_then_its_directory_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "archive"
    synced: list[tuple[bool, list[str]]] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        is_directory = stat.S_ISDIR(os.fstat(fd).st_mode)
        synced.append((is_directory, sorted(os.listdir(archive))))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    source = tmp_path / "m.eml"
    source.write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    final = mail_archive.store(str(source), str(archive), "copy.eml")
    assert final == str(archive / "copy.eml")
    (file_sync, directory_sync) = synced
    assert not file_sync[0] and file_sync[1][0].startswith(".incoming-")  # before the rename
    assert directory_sync == (True, ["copy.eml"])  # the directory, once the name is in it


def test_mail_archive_name_and_a_failed_copy_leaves_no_temporary_file(tmp_path: Path) -> None:
    when = datetime(2026, 11, 25, 10, 42, 4, 123456, tzinfo=UTC)
    name = mail_archive.archive_name("../../x y", when)
    assert name.startswith("20261125T104204.123456Z-.._.._x_y-") and name.endswith(".eml")
    with pytest.raises(FileNotFoundError):
        mail_archive.store(str(tmp_path / "missing.eml"), str(tmp_path / "arch"), "n.eml")
    assert os.listdir(tmp_path / "arch") == []


def test_mail_archive_wants_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(FilterError, match='ValueError: expected exec_cmd = "%f DIRECTORY"'):
        run_module(
            "milter_agent.modules.mail_archive", ["only-one"], message_file(tmp_path, text_mail())
        )
