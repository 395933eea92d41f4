"""milter-agent: a milter daemon that runs a pipeline of mail filters for Postfix and Sendmail."""

__version__ = "0.1.0"
