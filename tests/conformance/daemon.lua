-- Conformance, part 3: the real milter-agent daemon (-H -B, an [Address] rule adding a header,
-- a program filter replacing the body or rejecting), driven by miltertest.
-- Run: miltertest -D MILTER=unix:/path -D DIR=tests/conformance -s tests/conformance/daemon.lua
dofile(DIR .. "/common.lua")

run(function()
  local conn = connect()
  ok(mt.negotiate(conn, 6, nil, nil), "negotiate")  -- libmilter's defaults: all of v6
  -- -H and -B give exactly ADDHDRS and CHGBODY, plus SETSYMLIST for the macro lists
  for name, bit in pairs({ADDHDRS = SMFIF_ADDHDRS, CHGBODY = SMFIF_CHGBODY,
                          SETSYMLIST = SMFIF_SETSYMLIST}) do
    need(mt.test_action(conn, bit), "action not negotiated: " .. name)
  end
  for name, bit in pairs({CHGHDRS = SMFIF_CHGHDRS, ADDRCPT = SMFIF_ADDRCPT,
                          ADDRCPT_PAR = SMFIF_ADDRCPT_PAR, DELRCPT = SMFIF_DELRCPT,
                          CHGFROM = SMFIF_CHGFROM, QUARANTINE = SMFIF_QUARANTINE}) do
    need(not mt.test_action(conn, bit), "action asked for without its option: " .. name)
  end
  need(mt.test_option(conn, SMFIP_HDR_LEADSPC), "HDR_LEADSPC not negotiated")
  for name, bit in pairs({NOCONNECT = SMFIP_NOCONNECT, NOHELO = SMFIP_NOHELO,
                          NOMAIL = SMFIP_NOMAIL, NORCPT = SMFIP_NORCPT, NOBODY = SMFIP_NOBODY,
                          NOHDRS = SMFIP_NOHDRS, NOEOH = SMFIP_NOEOH, NODATA = SMFIP_NODATA,
                          NR_HDR = SMFIP_NR_HDR, NR_CONN = SMFIP_NR_CONN,
                          NR_BODY = SMFIP_NR_BODY, SKIP = SMFIP_SKIP}) do
    need(not mt.test_option(conn, bit), "protocol bit asked for: " .. name)
  end

  ok(mt.conninfo(conn, "client.test", "192.0.2.7"), "conninfo")
  reply_is(conn, SMFIR_CONTINUE, "conninfo")
  ok(mt.helo(conn, "client.test"), "helo")
  reply_is(conn, SMFIR_CONTINUE, "helo")

  -- message 1: the rule's header is added, the program's new body replaces the old one
  message(conn, "hello daemon")
  reply_is(conn, SMFIR_CONTINUE, "msg 1")
  need(mt.eom_check(conn, MT_HDRADD, "X-Milter-Agent", " checked a@example.com"),
       "msg 1: header X-Milter-Agent not added")
  need(mt.eom_check(conn, MT_BODYCHANGE, "replaced body\r\n"), "msg 1: body not replaced")
  need(not mt.eom_check(conn, MT_HDRCHANGE), "msg 1: a header changed")

  -- message 2: the program rejects it, with the filter's code and text
  message(conn, "please REJECTME", {qid = "QID2"})
  reply_is(conn, SMFIR_REPLYCODE, "msg 2")
  need(mt.eom_check(conn, MT_SMTPREPLY, "550", "5.7.1", "Refused by the conformance test"),
       "msg 2: reply")
  need(not mt.eom_check(conn, MT_HDRADD), "msg 2: a header added to a rejected message")
  need(not mt.eom_check(conn, MT_BODYCHANGE), "msg 2: the body of a rejected message replaced")
  mt.disconnect(conn)
end)
