"""The shipped example filters, run offline through the pipeline with stand-ins for clamdscan
and spamc, as a postmaster would try them with `milter-agent test`."""

from __future__ import annotations

import json
import logging
import os
import pwd
from pathlib import Path

import pytest

from milter_agent.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ME = pwd.getpwuid(os.geteuid()).pw_name  # run the filters as ourselves (as root: -u root)

FAKE_CLAMDSCAN = """#!/bin/sh
# stand-in for clamdscan --stream -: reads the message on stdin
if grep -q EICAR-STANDARD-ANTIVIRUS-TEST-FILE; then
  echo "stream: Eicar-Test-Signature FOUND"; exit 1
fi
exit 0
"""
FAKE_SPAMC = """#!/bin/sh
# stand-in for spamc -x: the message back with SpamAssassin's headers on top
msg=$(cat)
case $msg in *viagra*) flag=YES score=9.1 ;; *) flag=NO score=0.3 ;; esac
printf 'X-Spam-Flag: %s\\r\\nX-Spam-Status: %s, score=%s required=5.0\\r\\n\\ttests=STANDIN\\r\\n' "$flag" "$flag" "$score"
printf '%s\\n' "$msg"
"""


def example(tmp_path: Path, name: str) -> Path:
    """The example config with its paths pointing at this checkout and the stand-ins."""
    for tool, body in (("clamdscan", FAKE_CLAMDSCAN), ("spamc", FAKE_SPAMC)):
        (tmp_path / tool).write_text(body)
        (tmp_path / tool).chmod(0o755)
    (tmp_path / "disclaimer.txt").write_text("This message is confidential.\n")
    text = (EXAMPLES / name).read_text()
    for old, new in (
        ("/usr/local/libexec/milter-agent/", f"{EXAMPLES}/scripts/"),
        ("/usr/bin/clamdscan", str(tmp_path / "clamdscan")),
        ("/usr/bin/spamc", str(tmp_path / "spamc")),
        ("/var/mail-archive", str(tmp_path / "archive")),
        ("/etc/mail/disclaimer.txt", str(tmp_path / "disclaimer.txt")),
    ):
        text = text.replace(old, new)
    conf = tmp_path / name
    conf.write_text(text)
    return conf


def run(
    conf: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    body: bytes,
    sender: str = "a@example.com",
    headers: bytes = b"",
) -> tuple[int, dict[str, object]]:
    eml = tmp_path / "m.eml"
    eml.write_bytes(b"From: " + sender.encode() + b"\nSubject: test\n" + headers + b"\n" + body)
    code = main(
        [
            *("test", "-u", ME, "-c", str(conf), "--from", sender),
            *("--rcpt", "b@example.org", str(eml), "--json"),
        ]
    )
    return code, json.loads(capsys.readouterr().out)


def test_clamav_rejects_a_virus_with_its_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = example(tmp_path, "clamav.conf")
    code, report = run(conf, tmp_path, capsys, b"X5O!P%@AP EICAR-STANDARD-ANTIVIRUS-TEST-FILE!\n")
    assert code == 1 and report["reply"] == "550 5.7.1 Virus found: Eicar-Test-Signature"
    code, report = run(conf, tmp_path, capsys, b"clean\n")
    assert code == 0 and report["verdict"] == "continue"


def test_clamav_scanner_error_tempfails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = example(tmp_path, "clamav.conf")
    (tmp_path / "clamdscan").write_text("#!/bin/sh\nexit 2\n")
    code, report = run(conf, tmp_path, capsys, b"anything\n")
    assert code == 3 and report["reply"] == "451 4.7.1 Virus scanner unavailable, try again later"


def test_spamassassin_headers_are_added(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = example(tmp_path, "spamassassin.conf")
    code, report = run(conf, tmp_path, capsys, b"buy viagra now\n")
    assert code == 0
    assert report["headers_added"] == [
        ["X-Spam-Flag", "YES"],
        ["X-Spam-Status", "YES, score=9.1 required=5.0\r\n\ttests=STANDIN"],
    ]


def test_archive_stores_the_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = example(tmp_path, "archive.conf")
    code, _ = run(conf, tmp_path, capsys, b"keep me\n")
    assert code == 0
    (day,) = (tmp_path / "archive").iterdir()
    (stored,) = day.iterdir()
    assert stored.suffix == ".eml" and stored.read_bytes().endswith(b"\r\n\r\nkeep me\r\n")


def test_disclaimer_for_our_plain_text_mail_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = example(tmp_path, "disclaimer.conf")
    code, report = run(conf, tmp_path, capsys, b"hello\n")
    assert code == 0
    assert "+-- \r\n+This message is confidential.\r\n" in str(report["body_diff"])
    _, report = run(conf, tmp_path, capsys, b"hello\n", sender="a@elsewhere.org")
    assert report["body_diff"] == ""
    _, report = run(
        conf, tmp_path, capsys, b"--b\n", headers=b"Content-Type: multipart/mixed; boundary=b\n"
    )
    assert report["body_diff"] == ""


@pytest.mark.parametrize(
    ("headers", "changed"),
    [
        (b"Content-Type: text/plain; charset=utf-8\n", True),
        (b"MIME-Version: 1.0\nContent-Type: Text/Plain\n", True),
        (b"Content-Type: text/html; charset=utf-8\n", False),
        (b"Content-Type:multipart/mixed;boundary=b\n", False),
        (b"Content-Type:\n  multipart/alternative;\n\tboundary=b\n", False),
        (b"content-type : MULTIPART/MIXED ; boundary=b\n", False),
        (b"Content-Type: text/plain\nContent-Transfer-Encoding:BASE64\n", False),
    ],
)
def test_disclaimer_only_for_single_part_plain_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], headers: bytes, changed: bool
) -> None:
    conf = example(tmp_path, "disclaimer.conf")
    code, report = run(conf, tmp_path, capsys, b"hello\n", headers=headers)
    assert code == 0
    assert bool(report["body_diff"]) is changed, report["body_diff"]
    if changed:
        assert str(report["body_diff"]).endswith(
            " hello\r\n+\r\n+-- \r\n+This message is confidential.\r\n"
        )


def test_spamassassin_skips_messages_over_500k(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "milter_agent.engine")
    conf = example(tmp_path, "spamassassin.conf")
    line = b"buy viagra now " * 4 + b"\n"
    big = line * (500 * 1024 // len(line) + 1)  # just over 500k with the headers
    code, report = run(conf, tmp_path, capsys, big)
    assert code == 0 and report["headers_added"] == []
    assert [s["outcome"] for s in report["steps"]] == ["skipped:max_message_size"]  # type: ignore[index]
    assert "filter spamassassin skipped:" in caplog.text and "over max_message_size" in caplog.text
    small = line * (480 * 1024 // len(line))
    code, report = run(conf, tmp_path, capsys, small)
    assert [s["outcome"] for s in report["steps"]] == ["continue"]  # type: ignore[index]
    assert report["headers_added"][0] == ["X-Spam-Flag", "YES"]  # type: ignore[index]
