"""Errors for bad input: each names the problem and what to change.

They subclass ``ValueError`` so that servers can map every one of them to a 4xx answer; the
``vllm-padrec`` command prints them as one line and exits with status 2.
"""


class PadRecError(ValueError):
    """Base class of every input error raised by vllm-padrec."""


class CatalogError(PadRecError):
    """The catalog itself is inconsistent (lengths, codebooks, duplicate item ids)."""


class UnknownItemError(PadRecError, KeyError):
    """An item id that the catalog does not hold; ``item_ids`` lists every unknown one when a whole
    history was looked up (``ItemCatalog.history_indices``)."""

    def __init__(self, message: str, item_ids: list[str] | None = None) -> None:
        super().__init__(message)
        self.item_ids = item_ids or []

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


class DatasetError(PadRecError):
    """A dataset file that does not hold what its format says (names the file, and the line or key)."""


class CheckpointError(PadRecError):
    """A checkpoint folder or training-state file that is incomplete, truncated, or of another kind."""


class CatalogMismatchError(PadRecError):
    """A model trained on one catalog used with a dataset of another."""


class TooManyItemsError(PadRecError):
    """More distinct items asked for than the catalog holds (a list with no repeats, a beam search)."""


class InsufficientMemoryError(PadRecError):
    """A training run whose weights, optimiser state and activations cannot fit the device's memory."""
