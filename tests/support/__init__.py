"""Test infrastructure: a private Postfix instance, an SMTP sink, SMTP client helpers and a
helper that runs the milter-agent daemon. Everything talks to loopback or Unix sockets only."""
