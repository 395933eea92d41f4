"""``python -m milter_agent``: the daemon."""

from milter_agent.cli import main

raise SystemExit(main())
