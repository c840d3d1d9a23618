"""The project's one base error for bad input, apart from everything that raises or catches it.

BadInput means "an argument, file or setting a command cannot work with"; its message names the value and what
is allowed. ConfigError, a configuration key or value that is not allowed, is defined here too (ict_core/config and
tune/ raise it); the other kinds subclass BadInput where they are detected: DataError
(ict_core/data_types.py), SpaceError (tune/space.py), SearchError, CampaignError, LaunchError (tune/), SchemaError
(analysis/). Every command line ends in `except BadInput as err: return bad_input(err)` (ict_core/cli), which
prints one line and exits with code 2, never a traceback. This module imports nothing, so any layer may use it.
"""
from __future__ import annotations


class BadInput(ValueError):
    """An argument, file or setting a command cannot work with; the message names it and what is allowed."""


class ConfigError(BadInput):
    """A configuration key or value that is not allowed (ict_core/config, and the files tune/ reads with its engine)."""
