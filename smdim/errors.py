"""The one exception type users see: its message is a single actionable line."""


class SmdimError(Exception):
    """A problem the user can fix (bad input, bad parameter, missing file); printed in one line."""


class ConfigError(SmdimError):
    """A parameter in params.yaml (or an override) is missing, unknown or out of range."""
