"""Errors for bad input: each names the problem and what to change.

They subclass ``ValueError`` so that servers can map every one of them to a 4xx answer.
"""


class PadRecError(ValueError):
    """Base class of every input error raised by vllm-padrec."""


class CatalogError(PadRecError):
    """The catalog itself is inconsistent (lengths, codebooks, duplicate item ids)."""


class UnknownItemError(PadRecError, KeyError):
    """An item id that the catalog does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class MalformedSemanticIdError(PadRecError):
    """A semantic-ID string or token sequence that is not L code tokens in slot order."""


class UnknownSemanticIdError(PadRecError):
    """A well-formed semantic ID that names no item of the catalog."""


class EmptyHistoryError(PadRecError):
    """A recommendation request without any history item."""


class PromptTooLongError(PadRecError):
    """A prompt (plus the tokens to generate) that does not fit the model's context."""


class DraftTargetMismatchError(PadRecError):
    """A draft head whose vocabulary, hidden size or token layout differs from the target's."""
