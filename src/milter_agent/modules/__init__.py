"""Sample filter modules, usable as they are (``module_name = "milter_agent.modules.dummy"``) or
as starting points. The API they use is :mod:`milter_agent.filters.module_api`; see
docs/modules.md."""
