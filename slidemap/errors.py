"""One error type per boundary.

The CLI turns any :class:`SlidemapError` into one line on stderr and exit code 2;
the server turns it into a 4xx JSON body. Messages name the file and the fix.
"""

from __future__ import annotations


class SlidemapError(Exception):
    """Base of every error a user can fix."""

    exit_code = 2
    http_status = 400


class RegionError(SlidemapError):
    """A region manifest or one of its input files is wrong."""


class BuildError(SlidemapError):
    """A build step needs something that has not been built yet."""

    http_status = 409


class ModelError(SlidemapError):
    """A model artefact is missing, corrupt or does not match its inputs."""

    http_status = 409


class InputError(SlidemapError):
    """A file given on the command line (not a region input) is unusable."""
