"""Milter protocol version 6 constants: command and reply codes, action and protocol bits.

Values follow libmilter's mfdef.h (Sendmail 8.17) and Postfix milter8.c. Only numbers live here.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

PROTOCOL_VERSION = 6
MIN_PROTOCOL_VERSION = 2

#: Largest payload we send in one packet (libmilter MILTER_MAX_DATA_SIZE).
MAX_SEND_DATA = 65535
#: Largest packet we accept: Sendmail may negotiate 1 MiB - 1 of data (the length counts the
#: command byte).
MAX_RECEIVE_PACKET = 1024 * 1024


class Action(IntFlag):
    """SMFIF_* bits: the modifications a filter may make, offered by the MTA, chosen by us."""

    NONE = 0
    ADDHDRS = 0x01
    CHGBODY = 0x02
    ADDRCPT = 0x04
    DELRCPT = 0x08
    CHGHDRS = 0x10
    QUARANTINE = 0x20
    CHGFROM = 0x40
    ADDRCPT_PAR = 0x80
    SETSYMLIST = 0x100


class ProtocolFlag(IntFlag):
    """SMFIP_* bits: events the MTA may leave out or need no reply for, and protocol extensions."""

    NONE = 0
    NOCONNECT = 0x1
    NOHELO = 0x2
    NOMAIL = 0x4
    NORCPT = 0x8
    NOBODY = 0x10
    NOHDRS = 0x20
    NOEOH = 0x40
    NR_HDR = 0x80
    NOUNKNOWN = 0x100
    NODATA = 0x200
    SKIP = 0x400
    RCPT_REJ = 0x800
    NR_CONN = 0x1000
    NR_HELO = 0x2000
    NR_MAIL = 0x4000
    NR_RCPT = 0x8000
    NR_DATA = 0x10000
    NR_UNKN = 0x20000
    NR_EOH = 0x40000
    NR_BODY = 0x80000
    HDR_LEADSPC = 0x100000
    MDS_256K = 0x10000000
    MDS_1M = 0x20000000


class MacroStage(IntEnum):
    """SMFIM_* stage numbers used for macro lists in the negotiation reply (note EOM < EOH)."""

    CONNECT = 0
    HELO = 1
    ENVFROM = 2
    ENVRCPT = 3
    DATA = 4
    EOM = 5
    EOH = 6


# Command bytes, MTA -> filter (SMFIC_*).
CMD_OPTNEG = b"O"
CMD_MACRO = b"D"
CMD_CONNECT = b"C"
CMD_HELO = b"H"
CMD_MAIL = b"M"
CMD_RCPT = b"R"
CMD_DATA = b"T"
CMD_HEADER = b"L"
CMD_EOH = b"N"
CMD_BODY = b"B"
CMD_BODYEOB = b"E"
CMD_UNKNOWN = b"U"
CMD_ABORT = b"A"
CMD_QUIT = b"Q"
CMD_QUIT_NC = b"K"

# Reply bytes, filter -> MTA (SMFIR_*).
REPLY_CONTINUE = b"c"
REPLY_ACCEPT = b"a"
REPLY_REJECT = b"r"
REPLY_TEMPFAIL = b"t"
REPLY_DISCARD = b"d"
REPLY_REPLYCODE = b"y"
REPLY_SKIP = b"s"
REPLY_PROGRESS = b"p"
REPLY_SHUTDOWN = b"4"
REPLY_CONN_FAIL = b"f"
REPLY_ADDHEADER = b"h"
REPLY_INSHEADER = b"i"
REPLY_CHGHEADER = b"m"
REPLY_REPLBODY = b"b"
REPLY_ADDRCPT = b"+"
REPLY_ADDRCPT_PAR = b"2"
REPLY_DELRCPT = b"-"
REPLY_CHGFROM = b"e"
REPLY_QUARANTINE = b"q"
REPLY_OPTNEG = b"O"
