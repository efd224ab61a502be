"""Python-manual text: deterministic selection, clean prose sentences, clear errors."""

from __future__ import annotations

import pytest

from lowbit.errors import InputError
from lowbit.zoo.errors import MissingResourceError
from lowbit.zoo.text import (
    MAX_WORDS,
    MIN_WORDS,
    PYTHON_DOCS_DIR,
    _prose_paragraphs,
    doc_files,
    python_docs_text,
    sentence_pool,
    sentences,
)

pytestmark = pytest.mark.skipif(not PYTHON_DOCS_DIR.is_dir(),
                                reason="apt-get install python3.11-doc")

RST = """\
Title of the page
=================

The :func:`len` function returns the number of items in a :class:`~collections.deque`
object.  See :ref:`the tutorial <tut-intro>` and `the web site <https://python.org>`_ for more.

Here is an example::

   >>> len([1, 2, 3])
   3

.. code-block:: python

   print("This line is code and never a sentence in the output.")

.. note::

   Use ``*args`` when **many** arguments are passed to this *small* function.

* A bullet item that talks about the standard library and its many modules.
"""


def test_prose_extraction_drops_markup_and_code():
    paragraphs = _prose_paragraphs(RST)
    assert paragraphs == [  # the heading goes with its underline
        "The len function returns the number of items in a deque object. "
        "See the tutorial and the web site for more.",
        "Here is an example:",
        "Use *args when many arguments are passed to this small function.",
        "A bullet item that talks about the standard library and its many modules.",
    ]


def test_text_selection_is_deterministic_and_starts_with_the_tutorial():
    files = doc_files()
    assert files == doc_files() and files[0].parent.name == "tutorial"
    text = python_docs_text(max_chars=50_000)
    assert len(text) == 50_000 and text == python_docs_text(max_chars=50_000)
    assert text.startswith(".. _tut-appendix:")
    with pytest.raises(InputError):
        python_docs_text(max_chars=0)


def test_sentences_are_real_distinct_and_seeded():
    assert len(sentence_pool()) > 10_000
    a = sentences(256, seed=0)
    assert len(a) == 256 and len(set(a)) == 256 and a == sentences(256, seed=0)
    assert len(set(a) & set(sentences(256, seed=1))) < 20
    for s in a:
        assert MIN_WORDS <= len(s.split()) <= MAX_WORDS, s
        assert s[0].isupper() and s[-1] in ".!?", s
        assert not any(mark in s for mark in ("`", "::", ">>>", ":func:")), s
    with pytest.raises(InputError):
        sentences(len(sentence_pool()) + 1)


def test_missing_docs_say_what_to_install(tmp_path):
    with pytest.raises(MissingResourceError, match=r"apt-get install python3\.11-doc"):
        python_docs_text(root=tmp_path / "nowhere")
    with pytest.raises(MissingResourceError, match="section 'tutorial'"):
        doc_files(("tutorial",), root=tmp_path)
