"""Tests for data/prepare_debian_docs.py's HTML-to-text extraction (no network, no .debs)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("prepare_debian_docs", REPO / "data" / "prepare_debian_docs.py")
pdd = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = pdd  # dataclasses look their module up there
_spec.loader.exec_module(pdd)

LONG_DUMP = "\n".join(f"line {i} of a long verbatim dump" for i in range(pdd.MAX_PRE_LINES + 5))

PAGE = f"""<!DOCTYPE html>
<html><head><title>Ignored title</title><style>p {{ color: red }}</style>
<script>var x = "<p>not text</p>";</script></head>
<body>
<div class="related" role="navigation"><a href="index.html">Index</a> | <a href="next.html">Next</a></div>
<div class="sphinxsidebar"><h3>Table of contents</h3><ul><li><a href="#a">Sidebar link</a></li></ul></div>
<div class="body" role="main">
  <h1>Pipes and&nbsp;FIFOs<a class="headerlink" href="#pipes">¶</a></h1>
  <p>A pipe   has a
     <em>read end</em> and a <a href="write.html">write end</a>.</p>
  <ul><li>First item<li>Second <code>item</code></ul>
  <pre>$ mkfifo f
$ cat f</pre>
  <pre>{LONG_DUMP}</pre>
  <table><tr><th>Name</th><th>Size</th></tr><tr><td>buf</td><td>4096</td></tr></table>
  <p>Last &amp; final paragraph.</p>
</div>
<div class="footer">Copyright 2023, built with Sphinx.</div>
</body></html>"""

EXPECTED = """Pipes and FIFOs

A pipe has a read end and a write end.

- First item
- Second item

$ mkfifo f
$ cat f

Name | Size
buf | 4096

Last & final paragraph."""


def test_sphinx_page_keeps_main_content_only():
    text, link_fraction = pdd.html_to_text(PAGE, **{k: pdd.SPHINX[k] for k in ("main", "skip")})
    assert pdd.normalise(text) == EXPECTED
    assert 0 < link_fraction < 0.1  # "write end" is the only link left


def test_without_main_selector_boilerplate_stays_unless_skipped():
    text, link_fraction = pdd.html_to_text(PAGE)  # no main element named, no generator rules
    assert "Sidebar link" in text and "built with Sphinx" in text
    assert "Index | Next" not in text  # role=navigation is always dropped
    assert "not text" not in text and "color" not in text and "Ignored title" not in text
    assert "line 0 of a long verbatim dump" not in text  # longer than MAX_PRE_LINES


def test_index_page_is_mostly_links_and_unclosed_tags_are_tolerated():
    page = "<body><div><p>See:<ul>" + "".join(
        f'<li><a href="p{i}.html">Page number {i}' for i in range(20)) + "</div><p>Tail text"
    text, link_fraction = pdd.html_to_text(page)
    assert link_fraction > pdd.MAX_LINK_FRACTION
    assert text.splitlines()[:3] == ["See:", "", "- Page number 0"]
    assert text.endswith("- Page number 19\n\nTail text")
