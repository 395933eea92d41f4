"""Property-based fuzzing of the session state machine (the codec alone is fuzzed in
tests/unit/protocol/test_protocol_properties.py).

Random command sequences, 8-bit and NUL-laden fields, random and mutated byte streams are
driven through :class:`milter_agent.session.Session` with the real codec and a pipeline that
answers with random decisions (changes, new bodies, odd reply codes, exceptions, slowness).
Properties: nothing but ``ProtocolError`` ever escapes; every response the session produces is
allowed by the protocol (``conn.send`` checks and encodes it); every end of message gets exactly
one final reply; no spool file survives the connection.

Examples are kept modest for ``make test`` (120 per property); ``MA_FUZZ_EXAMPLES=N`` runs N,
and ``make soak`` runs 10,000 per property here and in the codec properties
(``FUZZ_EXAMPLES=N`` changes that).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import replace
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from faults.faultkit import POSTFIX_OFFER, message_commands
from milter_agent import protocol as p
from milter_agent.errors import ProtocolError
from milter_agent.message import Message
from milter_agent.pipeline import Changes, Decision, Reply, Verdict
from milter_agent.protocol.constants import Action, ProtocolFlag
from milter_agent.session import Services, Session
from milter_agent.spool import Spool

EXAMPLES = int(os.environ.get("MA_FUZZ_EXAMPLES", "120"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# --- strategies ------------------------------------------------------------------------------

text8 = st.binary(max_size=30).map(lambda b: p.decode_text(b.replace(b"\0", b"")))
hostile_text = st.one_of(
    text8,
    st.sampled_from(["", " ", "\r\n", "\n\n", "%s%n", "$(id)", "../../x", "\udcff", "a\rb"]),
)
header_names = st.from_regex(r"[!-9;-~]{1,20}", fullmatch=True)

commands = st.one_of(
    st.just(POSTFIX_OFFER),
    st.builds(
        p.OptNeg,
        st.integers(0, 8),
        st.integers(0, 0x1FF).map(Action),
        st.integers(0, 0x3FFFFF).map(ProtocolFlag),
    ),
    st.builds(
        p.Macro,
        st.sampled_from([b"C", b"H", b"M", b"R", b"T", b"L", b"N", b"B", b"E", b"\xff"]),
        st.dictionaries(st.sampled_from(["i", "j", "{auth_authen}", "\udcff"]), hostile_text),
    ),
    st.builds(p.Connect, hostile_text, st.just("U")),
    st.builds(p.Connect, hostile_text, st.sampled_from("L46"), st.integers(0, 65535), text8),
    st.builds(p.Helo, hostile_text),
    st.builds(p.Mail, hostile_text, st.lists(text8, max_size=2).map(tuple)),
    st.builds(p.Rcpt, hostile_text, st.lists(text8, max_size=2).map(tuple)),
    st.just(p.Data()),
    st.builds(p.Header, hostile_text, hostile_text),
    st.just(p.EndOfHeaders()),
    st.builds(p.Body, st.binary(max_size=200)),
    st.builds(p.EndOfMessage, st.binary(max_size=20)),
    st.builds(p.Unknown, hostile_text),
    st.sampled_from([p.Abort(), p.Quit(), p.QuitNoClose()]),
)


#: What the pipeline does for one message: "raise", "slow", or a decision and a new body.
Plan = str | tuple[Decision, bytes | None]


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    """What a pipeline might answer, including failures."""
    kind = draw(st.sampled_from(["decide", "decide", "decide", "raise", "slow"]))
    if kind != "decide":
        return kind
    reply = None
    if draw(st.booleans()):
        code = draw(st.sampled_from(["550", "451", "554", "250", "5x0", "", "4"]))
        enhanced = draw(st.sampled_from([None, "5.7.1", "4.7.1", "2.0.0", "x"]))
        reply = Reply(code, enhanced, tuple(draw(st.lists(hostile_text, max_size=40))))
    changes = Changes(
        add_headers=draw(st.lists(st.tuples(header_names, hostile_text), max_size=3)),
        change_headers=draw(
            st.lists(st.tuples(header_names, st.integers(1, 3), hostile_text), max_size=3)
        ),
        add_recipients=draw(st.lists(text8, max_size=2)),
        delete_recipients=draw(st.lists(text8, max_size=2)),
    )
    body = draw(st.none() | st.binary(max_size=200_000))
    return Decision(draw(st.sampled_from(list(Verdict))), reply, changes), body


class FuzzPipeline:
    """Answers each message with the next plan (cycling), like a real engine: it reads the
    spool file, and a new body lives in a spool file that the session must remove."""

    wants_content = True

    def __init__(self, spool: Spool, plans: list[Plan]) -> None:
        self.spool = spool
        self.plans = plans or [(Decision(), None)]
        self.runs = 0

    async def run(self, message: Message) -> Decision:
        plan = self.plans[self.runs % len(self.plans)]
        self.runs += 1
        assert message.spool_path is not None and message.spool_path.exists()
        if plan == "raise":
            raise RuntimeError("a filter bug")
        if plan == "slow":
            await asyncio.sleep(0.003)  # longer than the progress interval
            return Decision()
        assert isinstance(plan, tuple)
        template, body = plan
        decision = replace(template, changes=replace(template.changes))
        if body is not None:
            decision.changes.new_body = self.spool.create_empty("body")
            decision.changes.new_body.write_bytes(body)
        return decision


# --- the driver -------------------------------------------------------------------------------


def new_session(tmp: Path, plans: list[Plan]) -> tuple[Session, Spool]:
    spool = Spool(tmp / "spool")
    spool.prepare()
    policy = p.Policy.from_permissions(
        add_recipient=True,
        remove_recipient=True,
        add_header=True,
        change_header=True,
        change_body=True,
    )
    services = Services(
        policy=lambda: policy,
        pipeline=lambda: FuzzPipeline(spool, plans),  # type: ignore[arg-type,return-value]
        spool=spool,
        progress_interval=0.001,
    )
    return Session(services, "fuzz"), spool


async def drive(session: Session, chunks: list[bytes]) -> list[type]:
    """Feed bytes as the server does; check each answer; return the event types handled."""
    handled: list[type] = []
    conn = session.conn
    try:
        for chunk in [*chunks, b""]:
            conn.receive_data(chunk)
            while not isinstance(event := conn.next_event(), p.Sentinel):
                handled.append(type(event))
                answers = [r async for r in session.handle(event)]
                for response in answers:
                    conn.send(response)  # raises if the protocol does not allow it now
                if isinstance(event, p.EndOfMessage):
                    finals = [r for r in answers if not isinstance(r, _NOT_FINAL)]
                    assert len(finals) == 1 and answers[-1] is finals[0], answers
                if conn.phase is p.Phase.CLOSED:
                    return handled
            if event is p.CLOSED:
                return handled
    except ProtocolError:
        pass
    finally:
        session.close()
    return handled


_NOT_FINAL = (
    p.Progress,
    p.AddHeader,
    p.ChangeHeader,
    p.AddRecipient,
    p.DeleteRecipient,
    p.ReplaceBody,
)


def run(tmp: Path, chunks: list[bytes], plans: list[Plan]) -> list[type]:
    session, spool = new_session(tmp, plans)
    handled = asyncio.run(drive(session, chunks))
    leftovers = os.listdir(spool.directory)
    assert leftovers == [], leftovers
    return handled


OPENING = [POSTFIX_OFFER, p.Connect("h", "4", 25, "192.0.2.1"), p.Helo("h")]


@st.composite
def sessions(draw: st.DrawFn) -> list[p.Command]:
    """Mostly what an MTA sends (so that messages get decided), with commands dropped,
    random ones slipped in, and hostile values in every field."""
    out: list[p.Command] = [] if draw(st.integers(0, 9)) == 0 else list(OPENING)
    for _ in range(draw(st.integers(0, 3))):
        message = message_commands(
            sender=draw(hostile_text),
            recipients=draw(st.lists(hostile_text, min_size=1, max_size=3)),
            subject=draw(hostile_text),
            headers=draw(st.lists(st.tuples(hostile_text, hostile_text), max_size=3)),
            body=draw(st.binary(max_size=300)),
            queue_id=draw(hostile_text),
        )
        for command in message:
            dice = draw(st.integers(0, 24))
            if dice == 1:
                out.append(draw(commands))  # something else first
            if dice != 0:  # 0: left out
                out.append(command)
    return out + draw(st.lists(commands, max_size=3))


@FUZZ
@given(script=sessions(), plans=st.lists(plans(), max_size=4))
def test_command_sequences(script: list[p.Command], plans: list[Plan]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        handled = run(Path(tmp), [p.encode_command(c) for c in script], plans)
    event(f"messages decided: {min(handled.count(p.EndOfMessage), 3)}")


@FUZZ
@given(script=st.lists(commands, max_size=40), opening=st.booleans())
def test_random_command_sequences(script: list[p.Command], opening: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wire = [p.encode_command(c) for c in ([*OPENING, *script] if opening else script)]
        run(Path(tmp), wire, [])


def message_wire(**kw: object) -> bytes:
    return b"".join(p.encode_command(c) for c in message_commands(**kw))  # type: ignore[arg-type]


VALID = b"".join(p.encode_command(c) for c in OPENING) + message_wire() + message_wire()


@FUZZ
@given(
    cut=st.integers(0, len(VALID)),
    noise=st.binary(max_size=300),
    sizes=st.lists(st.integers(1, 200), max_size=10),
    plans=st.lists(plans(), max_size=2),
)
def test_valid_prefix_then_random_bytes(
    cut: int, noise: bytes, sizes: list[int], plans: list[Plan]
) -> None:
    data = VALID[:cut] + noise
    chunks, i = [], 0
    for size in sizes:
        chunks.append(data[i : i + size])
        i += size
    chunks.append(data[i:])
    with tempfile.TemporaryDirectory() as tmp:
        handled = run(Path(tmp), [c for c in chunks if c], plans)
    event(f"messages decided: {min(handled.count(p.EndOfMessage), 3)}")


def with_nul(field: str) -> bytes:
    """The valid session with one NUL pushed into the middle of ``field``'s first string."""
    values = {
        "helo": OPENING[2],
        "connect": OPENING[1],
        "mail": p.Mail("<a@example.org>"),
        "rcpt": p.Rcpt("<b@example.net>"),
        "header-name": p.Header("Subject", " hello"),
    }
    wire = p.encode_command(values[field])
    head, payload = wire[:5], wire[5:]
    middle = max(1, payload.find(b"\0") // 2)
    bad = payload[:middle] + b"\0" + payload[middle:]
    return VALID.replace(wire, (len(bad) + 1).to_bytes(4, "big") + head[4:5] + bad, 1)


def test_nul_inside_every_string_field_is_a_protocol_error_or_a_separator(tmp_path: Path) -> None:
    outcomes = {}
    for i, field in enumerate(["helo", "connect", "mail", "rcpt", "header-name"]):
        handled = run(tmp_path / str(i), [with_nul(field)], [])
        outcomes[field] = handled.count(p.EndOfMessage)
    # MAIL and RCPT take NUL-separated ESMTP arguments: the NUL splits, the messages go on;
    # the others have a fixed number of strings: the connection ends with a protocol error.
    assert outcomes == {"helo": 0, "connect": 0, "mail": 2, "rcpt": 2, "header-name": 0}


class Recorder:
    """Keeps what the pipeline saw: the spool file's bytes and the message's macros."""

    wants_content = True

    def __init__(self) -> None:
        self.spooled = b""
        self.macros: dict[str, str] = {}
        self.sender = ""

    async def run(self, message: Message) -> Decision:
        assert message.spool_path is not None
        self.spooled = message.spool_path.read_bytes()
        self.macros = dict(message.macros)
        self.sender = message.sender
        return Decision()


def test_eight_bit_and_nul_bytes_in_bodies_and_macros_pass(tmp_path: Path) -> None:
    every_byte = bytes(range(256))
    commands = [
        *OPENING,
        p.Macro(b"M", {"{auth_authen}": p.decode_text(every_byte[1:])}),
        *message_commands(
            sender=f"<{p.decode_text(every_byte[128:])}@example.org>",
            headers=[(p.decode_text(b"X-\xff\xfe"), p.decode_text(every_byte[1:]))],
            body=every_byte * 100,
            queue_id=p.decode_text(every_byte[1:]),
        ),
    ]
    recorder = Recorder()
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    session = Session(Services(policy=p.Policy, pipeline=lambda: recorder, spool=spool), "8bit")
    handled = asyncio.run(drive(session, [p.encode_command(c) for c in commands]))
    assert handled.count(p.EndOfMessage) == 1
    assert recorder.spooled.endswith(b"\r\n\r\n" + every_byte * 100)  # the body, NULs and all
    header = b"X-\xff\xfe:" + every_byte[1:].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert header in recorder.spooled
    assert p.encode_text(recorder.sender) == b"<" + every_byte[128:] + b"@example.org>"
    assert p.encode_text(recorder.macros["i"]) == every_byte[1:]
    assert p.encode_text(recorder.macros["{auth_authen}"]) == every_byte[1:]
    assert os.listdir(spool.directory) == []
