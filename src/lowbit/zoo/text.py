"""Real English text, offline: the Python 3.11 documentation sources.

The Debian package ``python3.11-doc`` installs the reStructuredText sources of
the whole Python manual (``/usr/share/doc/python3.11/html/_sources/**/*.rst.txt``,
about 12 MB). `python_docs_text` concatenates a fixed, sorted selection of
them — language-model evaluation text; `sentences` pulls prose sentences out
of the same files — calibration and evaluation inputs for sentence encoders.

Example:
    >>> len(python_docs_text(max_chars=10_000))
    10000
    >>> sentences(2, seed=0)  # doctest: +SKIP
    ['The ... statement ...', '...']
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import torch

from lowbit.errors import InputError
from lowbit.zoo.errors import MissingResourceError

__all__ = [
    "DEFAULT_SECTIONS",
    "PYTHON_DOCS_DIR",
    "doc_files",
    "python_docs_text",
    "sentence_pool",
    "sentences",
]

PYTHON_DOCS_DIR = Path("/usr/share/doc/python3.11/html/_sources")

# the manual's parts, in reading order: tutorial prose first, so a prefix of the
# text (e.g. two perplexity windows) is ordinary English with some code
DEFAULT_SECTIONS = ("tutorial", "faq", "howto", "reference", "library")

MIN_WORDS, MAX_WORDS = 10, 60

# directives whose indented body is code or grammar, not prose
_CODE_DIRECTIVES = re.compile(
    r"^\.\.\s+(code-block|code|sourcecode|testcode|testoutput|testsetup|doctest|"
    r"productionlist|literalinclude|highlight|raw|csv-table|list-table|table)::"
)
_ROLE = re.compile(r":[\w.+-]+(?::[\w.+-]+)*:`([^`]*)`")
_TARGET = re.compile(r"\s*<[^<>]*>$")
_LINK = re.compile(r"`([^`<]+?)(?:\s*<[^>]*>)?`__?")
_LITERAL = re.compile(r"``([^`]+)``")
_EMPHASIS = re.compile(r"\*{1,2}([^*\s](?:[^*]*[^*\s])?)\*{1,2}")
_BULLET = re.compile(r"^(?:[*+-]|#\.|\d+\.|\(\d+\))\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")
_UNDERLINE = re.compile(r"^([=\-~^*#+\"'`.:_])\1{2,}\s*$")


def doc_files(sections: tuple[str, ...] = DEFAULT_SECTIONS,
              root: str | os.PathLike[str] | None = None) -> list[Path]:
    """The ``*.rst.txt`` files of the chosen manual sections, in a fixed order.

    Args:
        sections: top-level folders of the manual, read in this order; files
            inside one section are sorted by their relative path.
        root: the ``_sources`` folder; default `PYTHON_DOCS_DIR`.

    Returns:
        Absolute paths.

    Raises:
        MissingResourceError: ``python3.11-doc`` is not installed.

    Example:
        >>> doc_files(("tutorial",))[0].name
        'appendix.rst.txt'
    """
    base = Path(root) if root is not None else PYTHON_DOCS_DIR
    if not base.is_dir():
        raise MissingResourceError(
            f"the Python documentation sources are not at {base}. Install them with: "
            "apt-get install python3.11-doc"
        )
    files: list[Path] = []
    for section in sections:
        folder = base / section
        if not folder.is_dir():
            raise MissingResourceError(
                f"section {section!r} of the Python documentation is missing ({folder}); "
                "reinstall it with: apt-get install --reinstall python3.11-doc"
            )
        files += sorted(folder.rglob("*.rst.txt"), key=lambda p: p.relative_to(base).as_posix())
    if not files:
        raise MissingResourceError(f"no *.rst.txt files under {base} for sections {sections}")
    return files


def python_docs_text(max_chars: int | None = None,
                     sections: tuple[str, ...] = DEFAULT_SECTIONS,
                     root: str | os.PathLike[str] | None = None) -> str:
    """The reStructuredText sources of the Python manual, concatenated.

    Files come in the order of `doc_files`, each followed by a blank line; the
    markup is kept (it is what the files say, and code is part of the manual).

    Args:
        max_chars: cut the text to this many characters (None: all of it, ~8.5 MB
            for the default sections).
        sections: manual sections to read, in order.
        root: the ``_sources`` folder; default `PYTHON_DOCS_DIR`.

    Returns:
        The text.

    Raises:
        MissingResourceError: ``python3.11-doc`` is not installed.

    Example:
        >>> python_docs_text(max_chars=17)
        '.. _tut-appendix:'
    """
    if max_chars is not None and max_chars < 1:
        raise InputError(f"max_chars must be positive or None, got {max_chars}")
    parts: list[str] = []
    total = 0
    for path in doc_files(sections, root):
        text = path.read_text(encoding="utf-8", errors="replace").strip() + "\n\n"
        parts.append(text)
        total += len(text)
        if max_chars is not None and total >= max_chars:
            break
    joined = "".join(parts)
    return joined if max_chars is None else joined[:max_chars]


def _inline_to_plain(text: str) -> str:
    """Replace reST inline markup by its visible text."""

    def role(m: re.Match[str]) -> str:
        inner = m.group(1)
        if _TARGET.search(inner) and not inner.startswith("<"):
            inner = _TARGET.sub("", inner)
        if inner.startswith("~"):  # Sphinx shows only the last dotted component
            return inner[1:].rsplit(".", 1)[-1]
        return inner.lstrip("!")

    text = _ROLE.sub(role, text)
    text = _LITERAL.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _EMPHASIS.sub(r"\1", text)
    return re.sub(r"\s+", " ", text.replace("\\", "")).strip()


def _prose_paragraphs(source: str) -> list[str]:
    """Paragraphs of running text in one reST file, markup removed, code skipped."""
    paragraphs: list[str] = []
    skip_deeper_than: int | None = None
    for block in re.split(r"\n\s*\n", source):
        lines = [line for line in block.split("\n") if line.strip()]
        if not lines:
            continue
        indent = len(lines[0]) - len(lines[0].lstrip())
        if skip_deeper_than is not None:
            if indent > skip_deeper_than:
                continue
            skip_deeper_than = None
        first = lines[0].strip()
        if first.startswith(".."):
            if _CODE_DIRECTIVES.match(first):
                skip_deeper_than = indent
            continue
        if block.rstrip().endswith("::"):  # the next, deeper block is a literal block
            skip_deeper_than = indent
        if first.startswith((">>>", "+-", "|", "=", "$", "%", "...")) or any(
            _UNDERLINE.match(line.strip()) for line in lines
        ):
            continue
        text = " ".join(line.strip() for line in lines)
        text = _BULLET.sub("", text)
        text = re.sub(r"::$", ":", text)
        paragraphs.append(_inline_to_plain(text))
    return paragraphs


def _is_sentence(s: str) -> bool:
    words = s.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return False
    if not s[0].isupper() or s[-1] not in ".!?":
        return False
    if any(mark in s for mark in ("`", "::", "|", ">>>", "==", "{", "}", "_", "\ufffd")):
        return False
    letters = sum(c.isalpha() or c == " " for c in s)
    return letters >= 0.85 * len(s)


@functools.lru_cache(maxsize=4)
def sentence_pool(sections: tuple[str, ...] = DEFAULT_SECTIONS,
                  root: str | None = None) -> tuple[str, ...]:
    """Every distinct prose sentence of the selected sections, in document order.

    A sentence has 10–60 words, starts with a capital letter, ends with
    ``.``, ``!`` or ``?``, is at least 85 % letters and spaces, and holds no
    leftover markup or code. Cached per ``(sections, root)``.

    Args:
        sections: manual sections to read.
        root: the ``_sources`` folder as a string; default `PYTHON_DOCS_DIR`.

    Returns:
        A tuple of sentences.

    Example:
        >>> len(sentence_pool(("tutorial",))) > 256
        True
    """
    seen: dict[str, None] = {}
    for path in doc_files(sections, root):
        source = path.read_text(encoding="utf-8", errors="replace")
        for paragraph in _prose_paragraphs(source):
            for s in _SENTENCE_END.split(paragraph):
                s = s.strip()
                if _is_sentence(s):
                    seen.setdefault(s, None)
    return tuple(seen)


def sentences(n: int, seed: int = 0, sections: tuple[str, ...] = DEFAULT_SECTIONS) -> list[str]:
    """``n`` distinct English sentences from the Python manual, chosen at random.

    Args:
        n: how many (at most ``len(sentence_pool(sections))``).
        seed: seed of the choice; the same seed gives the same list, two seeds
            give mostly different sentences.
        sections: manual sections to draw from.

    Returns:
        Sentences of 10–60 words each.

    Raises:
        InputError: ``n`` is not positive or larger than the pool.
        MissingResourceError: ``python3.11-doc`` is not installed.

    Example:
        >>> len(sentences(256, seed=0))
        256
    """
    pool = sentence_pool(tuple(sections))
    if not 1 <= n <= len(pool):
        raise InputError(f"n must be in 1..{len(pool)} (the sentences available), got {n}")
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
    return [pool[i] for i in order[:n].tolist()]
