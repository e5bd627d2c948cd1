"""A stopped or killed training run keeps everything it has finished writing.

- ``atomic_folder(path)``: a checkpoint folder is written into ``<name>.tmp-<pid>`` beside it, its
  files are fsynced, then it is renamed to ``<name>`` (``replace_folder``). So ``<name>`` either holds
  every file or does not exist: a reader never sees weights without their catalog and recipe.
- ``save_state(payload, path)``: a training-state file, written the same way (``<name>.tmp-<pid>``,
  fsync, ``os.replace``). ``load_state`` raises CheckpointError for a truncated or foreign file.
- ``StopSignals``: inside ``with StopSignals() as stop:``, SIGTERM and SIGINT set ``stop.signal``
  instead of ending the process; the training loop reads it at each step boundary, saves its state
  and returns. A second signal does what the handler before ours would have done (SIGINT: raise
  KeyboardInterrupt, SIGTERM: end the process).
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from vllm_padrec.errors import CheckpointError


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temporary(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: a sibling named after this process."""
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def _remove_stale_temporaries(path: Path) -> None:
    """Remove ``<name>.tmp-<pid>`` siblings of ``path`` whose process is gone (it was killed mid-write)."""
    for stale in path.parent.glob(f"{path.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # that process still runs (and may still be writing)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # it runs, as another user
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()


def replace_folder(source: Path, target: Path) -> None:
    """Rename folder ``source`` to ``target``. An existing ``target`` is renamed aside first and removed
    after, so that at every moment ``target`` is the old folder, the new one, or absent."""
    aside = None
    if target.exists():
        aside = target.with_name(f"{target.name}.old-{os.getpid()}")
        if aside.exists():
            shutil.rmtree(aside)
        os.replace(target, aside)
    os.replace(source, target)
    _fsync(target.parent)
    if aside is not None:
        shutil.rmtree(aside)


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder to write ``path``'s files into; when the block ends without an error,
    fsync them and rename the folder to ``path`` (replacing the old one). On an error the temporary
    folder is removed and ``path`` is left as it was."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(final)
    temporary = _temporary(final)
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir()
    try:
        yield temporary
        for file in temporary.rglob("*"):
            if file.is_file():
                _fsync(file)
        _fsync(temporary)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    replace_folder(temporary, final)


def save_state(payload: dict, path: str | Path) -> None:
    """``torch.save(payload)`` to ``path``, all or nothing (module docstring)."""
    final = Path(path)
    _remove_stale_temporaries(final)
    temporary = _temporary(final)
    try:
        torch.save(payload, temporary)
        _fsync(temporary)
        os.replace(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync(final.parent)


def load_state(path: str | Path, map_location: str | torch.device, required: tuple[str, ...], writer: str) -> dict:
    """The training state saved in ``path`` by ``writer`` (a function name, for the message); raises
    CheckpointError when the file is truncated or corrupt, or lacks a ``required`` key."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (EOFError, RuntimeError, pickle.UnpicklingError) as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0][:160]
        raise CheckpointError(f"{path} is truncated or corrupt ({reason}): delete it to start the run over") from None
    missing = [key for key in required if key not in state] if isinstance(state, dict) else list(required)
    if missing:
        raise CheckpointError(f"{path} was not written by {writer} (no {missing[0]!r}): use another output folder")
    return state


class StopSignals:
    """SIGTERM and SIGINT, while inside ``with``, become ``self.signal`` (module docstring).

    Handlers are installed only in the main thread (Python runs signal handlers there alone) and only
    for signals the process does not ignore (a shell starts background jobs with SIGINT ignored, so
    that Ctrl-C leaves them alone); the previous handlers are restored on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None  # the first signal received
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                if signal.getsignal(signum) is not signal.SIG_IGN:  # e.g. SIGINT of a background job (`&`)
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        if self.signal is None:
            self.signal = signal.Signals(signum)
            return
        previous = self._previous.get(signum)
        self.__exit__()
        if callable(previous):
            previous(signum, frame)
        elif previous in (signal.SIG_DFL, None):
            signal.raise_signal(signum)
