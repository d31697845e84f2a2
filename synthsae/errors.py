"""The one error type of a bad config value (its own module so the SAE variants can raise it without importing
synthsae.config, which looks variants up)."""


class ConfigError(ValueError):
    """A bad config value: the message is one line naming the field, the value and what is allowed."""
