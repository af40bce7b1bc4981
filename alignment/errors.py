"""The error every package raises for a problem the user can fix; the CLI prints it in one line."""


class CdraError(Exception):
    """A clear, actionable failure: bad input, a missing model, an unreachable endpoint."""

    exit_code = 2


class FormatError(CdraError, ValueError):
    """A data file breaks the formats of shared/design/formats.md; the message names file and line."""
