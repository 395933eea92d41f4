-- Conformance, part 1: a Postfix-like session with several messages on one connection.
-- Run: miltertest -D MILTER=unix:/path -D DIR=tests/conformance -s tests/conformance/session.lua
dofile(DIR .. "/common.lua")

local SP = " "  -- HDR_LEADSPC is negotiated: values travel with the space after the colon

local function check_modifications(conn, subject)
  local function added(name, value)
    need(mt.eom_check(conn, MT_HDRADD, name, value), "no header " .. name .. ": [" .. value .. "]")
  end
  added("X-Conformance", SP .. "yes")
  need(mt.getheader(conn, "X-Conformance", 0) == SP .. "yes", "mt.getheader X-Conformance")
  added("X-Echo-Subject", SP .. subject)                    -- 8-bit header value, byte for byte
  added("X-Echo-Folded", SP .. "line one\n\tline two")     -- folding kept as LF + TAB
  added("X-Echo-Macros", SP .. "i=QID1;j=mx.test;{cert_subject}=CN=Caf\xc3\xa9 \xff;"
        .. "{daemon_name}=conformance;{eom_x}=yes;{mail_addr}=a@example.com;"
        .. "{rcpt_addr}=b@example.com")
  added("X-Echo-Rcpts", SP .. "<b@example.com>,<c@example.com>")
  need(mt.eom_check(conn, MT_HDRINSERT, "X-Inserted", SP .. "top", 0), "insert header at 0")
  need(mt.eom_check(conn, MT_HDRCHANGE, "Subject", SP .. "changed"), "change Subject")
  need(mt.eom_check(conn, MT_HDRDELETE, "X-Remove-Me"), "delete X-Remove-Me")
  need(not mt.eom_check(conn, MT_HDRDELETE, "Subject"), "a change must not look like a delete")
  need(mt.eom_check(conn, MT_RCPTADD, "<added@example.com>"), "add recipient")
  need(mt.eom_check(conn, MT_RCPTDELETE, "<b@example.com>"), "delete recipient")
  need(mt.eom_check(conn, MT_BODYCHANGE, "new body line 1\r\n"), "new body, packet 1")
  need(mt.eom_check(conn, MT_BODYCHANGE, "new body line 2\r\n"), "new body, packet 2")
  need(mt.eom_check(conn, MT_QUARANTINE, "held by conformance test"), "quarantine")
end

run(function()
  local conn = connect()
  ok(mt.negotiate(conn, 6, nil, nil), "negotiate")  -- libmilter's defaults: all of v6
  for name, bit in pairs({ADDHDRS = SMFIF_ADDHDRS, CHGHDRS = SMFIF_CHGHDRS,
                          CHGBODY = SMFIF_CHGBODY, ADDRCPT = SMFIF_ADDRCPT,
                          ADDRCPT_PAR = SMFIF_ADDRCPT_PAR, DELRCPT = SMFIF_DELRCPT,
                          CHGFROM = SMFIF_CHGFROM, QUARANTINE = SMFIF_QUARANTINE,
                          SETSYMLIST = SMFIF_SETSYMLIST}) do
    need(mt.test_action(conn, bit), "action not negotiated: " .. name)
  end
  need(mt.test_option(conn, SMFIP_HDR_LEADSPC), "HDR_LEADSPC not negotiated")
  for name, bit in pairs({NOCONNECT = SMFIP_NOCONNECT, NOHELO = SMFIP_NOHELO,
                          NOMAIL = SMFIP_NOMAIL, NORCPT = SMFIP_NORCPT, NOBODY = SMFIP_NOBODY,
                          NOHDRS = SMFIP_NOHDRS, NOEOH = SMFIP_NOEOH, NODATA = SMFIP_NODATA,
                          NR_HDR = SMFIP_NR_HDR, NR_CONN = SMFIP_NR_CONN,
                          NR_BODY = SMFIP_NR_BODY, SKIP = SMFIP_SKIP}) do
    need(not mt.test_option(conn, bit), "protocol bit asked for: " .. name)
  end

  mt.macro(conn, SMFIC_CONNECT, "j", "mx.test", "{daemon_name}", "conformance")
  ok(mt.conninfo(conn, "client.test", "192.0.2.7"), "conninfo")
  reply_is(conn, SMFIR_CONTINUE, "conninfo")
  mt.macro(conn, SMFIC_HELO, "{cert_subject}", "CN=Caf\xc3\xa9 \xff")  -- 8-bit macro value
  for i = 1, 2 do  -- EHLO again, as after STARTTLS
    ok(mt.helo(conn, "client.test"), "helo " .. i)
    reply_is(conn, SMFIR_CONTINUE, "helo " .. i)
  end
  ok(mt.unknown(conn, "XFOO bar"), "unknown")
  reply_is(conn, SMFIR_CONTINUE, "unknown")

  -- message 1: every modification, then ACCEPT
  local subject = "caf\xc3\xa9 \xe9t\xe9 hello"
  message(conn, subject)
  reply_is(conn, SMFIR_ACCEPT, "msg 1")
  check_modifications(conn, subject)

  -- message 2: multi-line 550 with an escaped %
  message(conn, "please REJECTME", {qid = "QID2"})
  reply_is(conn, SMFIR_REPLYCODE, "msg 2")
  need(mt.eom_check(conn, MT_SMTPREPLY, "550-5.7.1", "Rejected",
                    "by conformance test\r\n550 5.7.1 100%% sure"), "msg 2: reply text")
  need(not mt.eom_check(conn, MT_HDRADD), "msg 2: no modifications before a reject")

  -- message 3: TEMPFAIL
  message(conn, "TEMPME please", {qid = "QID3"})
  reply_is(conn, SMFIR_TEMPFAIL, "msg 3")

  -- message 4 aborted after the headers, message 5 on the same connection ends with CONTINUE
  message(conn, "never finished", {abort = true})
  message(conn, "CONTINUEME", {qid = "QID5"})
  reply_is(conn, SMFIR_CONTINUE, "msg 5")
  need(mt.eom_check(conn, MT_HDRADD, "X-Conformance", SP .. "yes"), "msg 5: X-Conformance")
  mt.disconnect(conn)

  -- a second connection from an IPv6 client that hangs up without QUIT
  local c6 = connect()
  ok(mt.conninfo(c6, "v6.test", "2001:db8::7"), "conninfo v6")
  reply_is(c6, SMFIR_CONTINUE, "conninfo v6")
  message(c6, "over IPv6")
  reply_is(c6, SMFIR_ACCEPT, "v6 message")
  mt.disconnect(c6, false)
end)
