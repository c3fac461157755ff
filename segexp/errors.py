"""The one exception type for mistakes a user can fix.

Every layer raises a subclass of ``UserError`` (``DataError``, ``CheckpointError``,
``ConfigError``, ...) with a message that names the key or file, the problem and the
fix; ``segexp.cli.errors`` turns it into that message and exit code 2 at every entry
point. Anything else is a bug and keeps its traceback.

This module sits below every layer so that each can raise without importing upward.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in the user's config, data, checkpoint or command line; the message says the fix."""
