-- Conformance, part 2: negotiation with MTAs that offer less, and address families.
-- Run: miltertest -D MILTER=unix:/path -D DIR=tests/conformance -s tests/conformance/negotiation.lua
-- Note: miltertest's real signature is mt.negotiate(conn, version, protocol, actions); its man
-- page swaps the last two.
dofile(DIR .. "/common.lua")

run(function()
  -- An MTA offering only ADDHDRS and no protocol bits: we may ask for nothing more, so no
  -- SETSYMLIST (no macro lists) and no HDR_LEADSPC (values go out without a leading space).
  local conn = connect()
  ok(mt.negotiate(conn, 6, 0, SMFIF_ADDHDRS), "negotiate ADDHDRS only")
  need(mt.test_action(conn, SMFIF_ADDHDRS), "ADDHDRS not negotiated")
  for name, bit in pairs({CHGHDRS = SMFIF_CHGHDRS, CHGBODY = SMFIF_CHGBODY,
                          ADDRCPT = SMFIF_ADDRCPT, DELRCPT = SMFIF_DELRCPT,
                          QUARANTINE = SMFIF_QUARANTINE, SETSYMLIST = SMFIF_SETSYMLIST}) do
    need(not mt.test_action(conn, bit), "asked for an action not offered: " .. name)
  end
  need(not mt.test_option(conn, SMFIP_HDR_LEADSPC), "asked for HDR_LEADSPC, not offered")
  ok(mt.conninfo(conn, "unknown.test", "unspec"), "conninfo unspec")  -- family 'U'
  reply_is(conn, SMFIR_CONTINUE, "conninfo unspec")
  message(conn, "restricted")
  reply_is(conn, SMFIR_ACCEPT, "restricted message")
  need(mt.eom_check(conn, MT_HDRADD, "X-Conformance", "yes"), "X-Conformance without space")
  need(mt.eom_check(conn, MT_HDRINSERT, "X-Inserted", "top", 0), "insert header")
  need(not mt.eom_check(conn, MT_HDRCHANGE), "changed a header without CHGHDRS")
  need(not mt.eom_check(conn, MT_HDRDELETE), "deleted a header without CHGHDRS")
  need(not mt.eom_check(conn, MT_BODYCHANGE), "replaced the body without CHGBODY")
  need(not mt.eom_check(conn, MT_RCPTADD, "<added@example.com>"), "added a rcpt without ADDRCPT")
  need(not mt.eom_check(conn, MT_QUARANTINE), "quarantined without QUARANTINE")
  mt.disconnect(conn)

  -- A version 2 MTA offering everything: no macro lists below version 6.
  conn = connect()
  ok(mt.negotiate(conn, 2, nil, nil), "negotiate v2")
  need(mt.test_action(conn, SMFIF_ADDHDRS), "v2: ADDHDRS not negotiated")
  need(not mt.test_action(conn, SMFIF_SETSYMLIST), "v2: SETSYMLIST asked for")
  ok(mt.conninfo(conn, "client.test", "192.0.2.8"), "v2 conninfo")
  reply_is(conn, SMFIR_CONTINUE, "v2 conninfo")
  mt.disconnect(conn)

  -- A version 1 MTA is refused: the filter closes the connection.
  conn = connect()
  need(mt.negotiate(conn, 1, nil, nil) ~= nil, "version 1 was not refused")
  mt.disconnect(conn, false)
end)
