-- Helpers shared by the conformance scripts (loaded with dofile(DIR .. "/common.lua")).
--
-- miltertest exits 1 without printing Lua errors, so every script runs its checks inside
-- run(), which prints "FAIL: <reason>" or "ALL OK".

SOCK = MILTER or error("run with -D MILTER=unix:/path or -D MILTER=inet:PORT@127.0.0.1")

function need(cond, what)
  if not cond then error(what, 2) end
end

-- miltertest functions return nil on success, an error string otherwise.
function ok(ret, what)
  if ret ~= nil then error(what .. ": " .. tostring(ret), 2) end
end

function reply_is(conn, expected, what)
  local got = mt.getreply(conn)
  if got ~= expected then
    error(string.format("%s: reply '%s', expected '%s'", what, string.char(math.floor(got)),
                        string.char(math.floor(expected))), 2)
  end
end

function connect()
  local conn = mt.connect(SOCK, 20, 0.1)
  need(conn ~= nil, "mt.connect(" .. SOCK .. ") failed")
  return conn
end

-- One message: MAIL with ESMTP args, two RCPTs, DATA, four headers (8-bit subject, a folded
-- one), EOH, one body chunk, an end-of-message macro, EOM (read the final reply with
-- mt.getreply). With opts.abort it sends ABORT after the headers instead.
function message(conn, subject, opts)
  opts = opts or {}
  mt.macro(conn, SMFIC_MAIL, "i", opts.qid or "QID1", "{mail_addr}", "a@example.com")
  ok(mt.mailfrom(conn, "<a@example.com>", "SIZE=1234", "BODY=8BITMIME"), "mailfrom")
  reply_is(conn, SMFIR_CONTINUE, "mailfrom")
  mt.macro(conn, SMFIC_RCPT, "{rcpt_addr}", "b@example.com")
  ok(mt.rcptto(conn, "<b@example.com>"), "rcptto b")
  reply_is(conn, SMFIR_CONTINUE, "rcptto b")
  ok(mt.rcptto(conn, "<c@example.com>", "NOTIFY=NEVER"), "rcptto c")
  reply_is(conn, SMFIR_CONTINUE, "rcptto c")
  ok(mt.data(conn), "data")
  reply_is(conn, SMFIR_CONTINUE, "data")
  for _, h in ipairs({{"From", "a@example.com"}, {"Subject", subject},
                      {"X-Folded", "line one\n\tline two"}, {"X-Remove-Me", "spam"}}) do
    ok(mt.header(conn, h[1], h[2]), "header " .. h[1])
    reply_is(conn, SMFIR_CONTINUE, "header " .. h[1])
  end
  if opts.abort then
    ok(mt.abort(conn), "abort")
    return
  end
  ok(mt.eoh(conn), "eoh")
  reply_is(conn, SMFIR_CONTINUE, "eoh")
  ok(mt.bodystring(conn, "hello world\r\nline 2\r\n"), "body")
  reply_is(conn, SMFIR_CONTINUE, "body")
  mt.macro(conn, string.byte("E"), "{eom_x}", "yes")
  ok(mt.eom(conn), "eom")
end

function run(main)
  local fine, err = pcall(main)
  if not fine then
    print("FAIL: " .. tostring(err))
    os.exit(1)
  end
  print("ALL OK")
end
