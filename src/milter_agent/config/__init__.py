"""The configuration of milter-agent: command line, file syntax, the immutable model, reload.

Most callers need only what is re-exported here.
"""

from milter_agent.config.model import (
    AddressList,
    AddressRule,
    Config,
    CronExpression,
    FileStamp,
    FilterSpec,
    HeaderTemplate,
    Section,
    Settings,
    SubjectList,
)
from milter_agent.config.options import CommandLine, build_parser, parse_command_line
from milter_agent.config.parser import ConfigLocked, load_config, parse_config_text
from milter_agent.config.problems import ConfigErrors
from milter_agent.config.reload import ConfigStore
from milter_agent.config.render import check_config, render_config

__all__ = [
    "AddressList",
    "AddressRule",
    "CommandLine",
    "Config",
    "ConfigErrors",
    "ConfigLocked",
    "ConfigStore",
    "CronExpression",
    "FileStamp",
    "FilterSpec",
    "HeaderTemplate",
    "Section",
    "Settings",
    "SubjectList",
    "build_parser",
    "check_config",
    "load_config",
    "parse_command_line",
    "parse_config_text",
    "render_config",
]
