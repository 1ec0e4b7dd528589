"""One error type per boundary.

The CLI turns any :class:`SlidemapError` into one line on stderr and exit code 2;
the server turns it into a 4xx JSON body (the statuses are the web layer's business:
``slidemap.server.errors`` maps these types, in one place). Messages name the file and the fix.
"""

from __future__ import annotations


class SlidemapError(Exception):
    """Base of every error a user can fix."""

    exit_code = 2


class RegionError(SlidemapError):
    """A region manifest or one of its input files is wrong."""


class BuildError(SlidemapError):
    """A build step needs something that has not been built yet."""


class ModelError(SlidemapError):
    """A model artefact is missing, corrupt or does not match its inputs."""


class InputError(SlidemapError):
    """A file given on the command line (not a region input) is unusable."""
