"""Text corpora of the char model: reading a user's file with clear errors, finding (or
downloading, checksum-verified, cached atomically) the default corpus ``macbeth``, the
character vocabulary, and the train/validation split (the last 10% held out).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .. import _config

#: A path given as a string or a path object.
PathLike = str | os.PathLike[str]

__all__ = ["CORPORA", "MACBETH_SHA256", "MACBETH_URL", "DataError", "Vocab", "data_dir", "fetch_macbeth",
           "load_corpus", "read_text", "split_train_val"]

MACBETH_FILENAME = "macbeth.txt"
#: NLTK's Gutenberg copy of the First Folio Macbeth, pinned to one commit.
MACBETH_URL = ("https://raw.githubusercontent.com/nltk/nltk/4dc39fbf6965509f7b74316eff239bd110a03b49/"
               "nltk_data/corpora/gutenberg/shakespeare-macbeth.txt")
MACBETH_SHA256 = "d4a204352cfe5924cbae76f764225d120e9f7617d39cb8c949dedd3f306353ac"
#: Seconds before a download attempt gives up.
DOWNLOAD_TIMEOUT = 30.0

#: Named corpora that ``--text`` may be left out for.
CORPORA = ("macbeth",)


class DataError(Exception):
    """Bad input a user can fix: the message says what is wrong and what to do."""


def data_dir() -> Path:
    """The data folder.

    Returns
    -------
    pathlib.Path
        ``$FASTLSTM_DATA``, else ``$XDG_CACHE_HOME/fastlstm``, else ``~/.cache/fastlstm``
        (not created here).
    """
    env = _config.data_folder()
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "fastlstm"


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB pieces (corpora and checkpoint arrays)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def decode_text(raw: bytes, source: str, encoding: str = "utf-8") -> str:
    """Decode bytes with the checks of :func:`read_text`.

    Parameters
    ----------
    raw : bytes
        The file's contents.
    source : str
        Names the file in error messages.
    encoding : str, optional
        A Python codec name (default UTF-8); a UTF-8 byte-order mark is dropped.

    Returns
    -------
    str
        The text.

    Raises
    ------
    DataError
        For empty or binary contents, an unknown encoding or bytes that do not decode.
    """
    if not raw:
        raise DataError(f"{source} is empty: pass a text file with some text in it")
    plain = encoding.lower().replace("-", "").replace("_", "") in ("utf8", "utf8sig", "ascii", "latin1")
    if plain and b"\x00" in raw[:1 << 20]:
        raise DataError(f"{source} looks binary (it contains NUL bytes): pass a plain text file "
                        f"(UTF-8, or name its encoding with --encoding)")
    try:
        text = raw.decode(encoding)
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r}: pass a Python codec name to --encoding, "
                        f"e.g. utf-8, latin-1, cp1252") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{source} is not valid {encoding} (byte 0x{raw[e.start]:02x} at offset {e.start}): "
                        f"name its real encoding with --encoding (e.g. --encoding latin-1) "
                        f"or convert it to UTF-8") from None
    text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not part of the text
    if not text:
        raise DataError(f"{source} is empty: pass a text file with some text in it")
    if "\x00" in text:
        raise DataError(f"{source} looks binary (it contains NUL characters): pass a plain text file")
    return text


def read_text(path: PathLike, encoding: str = "utf-8") -> str:
    """Read a text file, with errors a user can act on.

    Parameters
    ----------
    path : str or path-like
        The file.
    encoding : str, optional
        A Python codec name (default UTF-8).

    Returns
    -------
    str
        The file's text.

    Raises
    ------
    DataError
        For a missing, unreadable, empty or binary file, or one that does not decode with
        ``encoding``.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"text file {str(p)!r} does not exist: check the path given to --text")
    if p.is_dir():
        raise DataError(f"{str(p)!r} is a folder, not a text file: pass a file to --text")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {str(p)!r} ({e.strerror or e}): check its permissions") from None
    return decode_text(raw, repr(str(p)), encoding)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, data: bytes | Callable[[BinaryIO], object]) -> None:
    """Replace ``path`` atomically: readers see the old file or the new one, never a part.

    Writes a temporary file in the same folder, fsyncs it and ``os.replace``s it over
    ``path``, with the permissions the umask gives a new file.

    Parameters
    ----------
    path : str or path-like
        The file to write; its folder must exist.
    data : bytes or callable
        The contents, or a callable that writes them to the binary file object it is given.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def fetch_macbeth(folder: PathLike | None = None, *, url: str | None = None,
                  sha256: str | None = None, timeout: float | None = None) -> Path:
    """Path of the default corpus, verified by sha256.

    Looks for ``macbeth.txt`` in ``folder``; when it is absent or its checksum differs,
    downloads it, verifies the checksum and caches it with an atomic write.

    Parameters
    ----------
    folder : str or path-like, optional
        Where to look and cache (default :func:`data_dir`).
    url : str, optional
        Download address (default ``$FASTLSTM_MACBETH_URL``, else :data:`MACBETH_URL`).
    sha256 : str, optional
        Expected checksum (default :data:`MACBETH_SHA256`).
    timeout : float, optional
        Seconds before the download gives up (default :data:`DOWNLOAD_TIMEOUT`).

    Returns
    -------
    pathlib.Path
        ``folder / "macbeth.txt"``.

    Raises
    ------
    DataError
        When it cannot (offline, wrong checksum, unwritable folder); the message says what
        to do instead.
    """
    folder = Path(folder) if folder is not None else data_dir()
    url = url or _config.macbeth_url() or MACBETH_URL
    expected = sha256 or MACBETH_SHA256
    timeout = DOWNLOAD_TIMEOUT if timeout is None else timeout
    path = folder / MACBETH_FILENAME
    if path.is_file():
        try:
            if sha256_file(path) == expected:
                return path
        except OSError:
            pass
    how = (f"pass a UTF-8 text file with --text PATH, or put {MACBETH_FILENAME} "
           f"(sha256 {expected}) in {folder} (set {_config.DATA_ENV} to choose that folder)")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            raw = resp.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(f"the default corpus is not in {folder} and downloading it from {url} failed "
                        f"({reason}); if you are offline, {how}") from None
    got = hashlib.sha256(raw).hexdigest()
    if got != expected:
        raise DataError(f"the file downloaded from {url} has sha256 {got}, expected {expected}; "
                        f"it was not cached. Try again later, or {how}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(path, raw)
    except OSError as e:
        raise DataError(f"cannot cache the default corpus in {folder} ({e.strerror or e}): "
                        f"set {_config.DATA_ENV} to a writable folder, or pass a file with --text PATH") from None
    return path


def load_corpus(text: PathLike | None = None, corpus: str = "macbeth",
                encoding: str = "utf-8") -> tuple[str, str]:
    """The training text: the file ``text`` if given, else the named corpus.

    Parameters
    ----------
    text : str or path-like, optional
        A UTF-8 (or ``encoding``) text file.
    corpus : str, optional
        A name from :data:`CORPORA`, used when ``text`` is None (default "macbeth").
    encoding : str, optional
        The encoding of ``text``.

    Returns
    -------
    text : str
        The contents.
    source : str
        The file's path, or the corpus name.

    Raises
    ------
    DataError
        For an unusable file, an unknown corpus, or a corpus that cannot be fetched.
    """
    if text is not None:
        return read_text(text, encoding), str(text)
    if corpus != "macbeth":
        raise DataError(f"unknown corpus {corpus!r}: the named corpora are {', '.join(CORPORA)}; "
                        f"pass your own file with --text PATH")
    path = fetch_macbeth()
    return read_text(path, "utf-8"), "macbeth"


class Vocab:
    """The sorted distinct characters of a text; ids are positions in that list.

    Parameters
    ----------
    chars : iterable of str
        Distinct single characters, in id order.

    Attributes
    ----------
    chars : list of str
        The characters; ``chars[id]``.
    index : dict of str to int
        The id of each character.

    Raises
    ------
    ValueError
        When the characters are not distinct single characters.
    """

    def __init__(self, chars: Iterable[str]) -> None:
        chars = list(chars)
        if len(set(chars)) != len(chars) or not all(isinstance(c, str) and len(c) == 1 for c in chars):
            raise ValueError("a vocabulary is a list of distinct single characters")
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}
        self._table: NDArray[np.int32] | None = None

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        """The vocabulary of a text: its distinct characters, sorted.

        Parameters
        ----------
        text : str
            Any text.

        Returns
        -------
        Vocab
            Its distinct characters, sorted by code point.
        """
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.chars == other.chars

    def __repr__(self) -> str:
        return f"Vocab({len(self)} chars: {''.join(self.chars)!r})"

    def unknown(self, text: str) -> list[str]:
        """The characters of ``text`` that are not in the vocabulary.

        Parameters
        ----------
        text : str
            The text to check.

        Returns
        -------
        list of str
            Sorted, each once.
        """
        return sorted(set(text) - set(self.index))

    def encode(self, text: str) -> NDArray[np.int32]:
        """Ids of the characters of a text.

        Parameters
        ----------
        text : str
            Characters of the vocabulary only.

        Returns
        -------
        ndarray of int32
            One id per character.

        Raises
        ------
        KeyError
            For a character outside the vocabulary.
        """
        if all(ord(c) < 65536 for c in self.chars):
            # fast path: a lookup table over the UTF-32 code points
            if self._table is None:
                self._table = np.full(65536, -1, np.int32)
                for i, c in enumerate(self.chars):
                    self._table[ord(c)] = i
            cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
            if cps.size and cps.max() < 65536:
                ids = self._table[cps]
                if ids.size == 0 or ids.min() >= 0:
                    return ids
        return np.array([self.index[c] for c in text], dtype=np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of a sequence of ids.

        Parameters
        ----------
        ids : iterable of int
            Ids in [0, len(vocab)).

        Returns
        -------
        str
            One character per id.
        """
        return "".join(self.chars[int(i)] for i in ids)


def split_train_val(ids: Sequence[int] | NDArray[np.integer],
                    val_fraction: float = 0.1) -> tuple[ArrayLike, ArrayLike]:
    """Split a sequence into training and held-out parts; the last part is held out.

    Parameters
    ----------
    ids : sequence or ndarray
        The encoded text.
    val_fraction : float, optional
        The fraction held out, rounded to whole elements (default 0.1).

    Returns
    -------
    train, val
        Slices of ``ids`` (views for arrays).
    """
    n = len(ids)
    n_val = round(n * val_fraction)
    return ids[:n - n_val], ids[n - n_val:]
