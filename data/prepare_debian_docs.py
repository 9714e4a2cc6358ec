"""Build the "debian_docs" corpus: English prose from Debian bookworm documentation packages.

The lent GPU machine has no network and takes at most 64 MiB of files, so the only real text
it can train on is text we carry. This script builds that text from Debian `main` packages
(the manuals, books and reference documentation of Debian, Linux, Python, PostgreSQL, Django,
LLVM, Git, Perl, Rust, Racket, Java, Qt, GNU tools, the Linux man-pages, GIMP, ...), each
pinned to the exact bookworm version in SOURCES, and writes

    <out>/debian_docs.jsonl.xz   one {"text": ...} JSON object per line: one document per HTML
                                 page / POD file / man page / Info chapter / help file
    <out>/manifest.json          packages, versions and .deb sha256s, documents and characters
                                 (in all and per package), sha256 and size of the .jsonl
                                 before compression and of the .xz

How: `apt-get download <package>=<version>` into <work>/debs (no install needed); from each
.deb, `dpkg-deb --fsys-tarfile` streamed through tarfile writes only the files its Source
names into <work>/root/<package> (what `dpkg-deb -x` would give, less the images, generated
API references, indexes, search pages, translations and single-page duplicates of split
manuals). Those become plain text: HTML (and Mallard / DocBook XML) with the standard
library's html.parser (scripts, styles, navigation bars, sidebars, headers and footers dropped;
the page's main-content element kept where the generator marks one; code blocks kept when at
most MAX_PRE_LINES lines, longer verbatim dumps dropped); POD, man(7) roff, GNU Info and plain
text with the small converters below. Whitespace is normalised; documents under MIN_CHARS
characters, documents that are mostly link text (tables of contents, indexes) and exact
duplicates are dropped. Documents come in a fixed order (package name, then file path), so the
same .debs give a byte-identical .jsonl whatever --workers is (its sha256 is in the manifest).
The .xz is XZ_PARTS concatenated streams (compressed in parallel), which `xz -d`, `xzcat` and
Python's lzma.open read as one file. About 6 CPU-minutes on bookworm's versions: ~230M
characters, ~41 MiB compressed.

    python data/prepare_debian_docs.py [--out data/debian_docs] [--work /tmp/debian_docs_work]
                                       [--workers 2] [--unpinned] [--keep-jsonl]
                                       [--only PKG ...] [--force]

--unpinned takes whatever version apt offers where a pinned one is gone from the archive (the
manifest records the versions actually used; the text then differs). On the GPU machine:

    python -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" \\
        data/debian_docs/debian_docs.jsonl.xz data/debian_docs/debian_docs.jsonl
    python data/tokenize_corpus.py --files data/debian_docs/debian_docs.jsonl --out data/debian_docs_tok \\
        --val-tokens 2000000    # the corpus is ~67.5M tokens: a 100M default val shard would take it all

Needs apt-get and dpkg-deb (Debian/Ubuntu) with a bookworm `main` source, and ~1.2 GB of disk
in --work (the .debs are kept there and reused by a rerun).
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import gzip
import hashlib
import html
import json
import lzma
import multiprocessing
import os
import re
import shutil
import subprocess
import tarfile
import time
import unicodedata
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

MIN_CHARS = 500          # shorter documents are dropped
MAX_PRE_LINES = 30       # longer <pre> / verbatim blocks are dropped ("long verbatim dumps")
MAX_PRE_CHARS = 2500
MAX_LINK_FRACTION = 0.5  # documents with more of their text inside <a> are indexes / TOCs
XZ_PRESET = 9 | lzma.PRESET_EXTREME
XZ_PARTS = 2             # .xz streams compressed in parallel (fixed, so --workers cannot change the file)


# ----------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class Source:
    """Which files of one package become documents, and how they are read.

    include/exclude are fnmatch patterns on the path inside the package ('*' crosses '/').
    kind: html | pod | info | man | text | jargon. main: selectors of the page's main-content
    element, tried in order (the first that matches anywhere wins; none matching keeps the
    whole page).
    skip: extra selectors whose elements are dropped (on top of SKIP_ALWAYS).
    Selectors are 'tag', '#id', '.class', 'tag.class', '[attr=value]', '[attr^=prefix]'.
    drop_lines: regular expressions; lines of the result that one matches in full are removed.
    """

    package: str
    version: str
    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    kind: str = "html"
    main: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    drop_lines: tuple[str, ...] = ()


# Elements never kept, whatever the generator.
SKIP_ALWAYS = (
    "head", "script", "style", "noscript", "template", "svg", "math", "button", "select", "form",
    "iframe", "object", "canvas", "nav", "[role=navigation]", "[role=search]", "[role=banner]",
    "[role=contentinfo]", ".headerlink", "[aria-hidden=true]",
)
# Generators' own boilerplate.
SPHINX = dict(main=("[role=main]", "main"),
              skip=(".sphinxsidebar", ".related", ".footer", "footer", ".rst-footer-buttons",
                    ".prev-next-area", ".bd-sidebar", ".bd-sidebar-primary", ".bd-sidebar-secondary",
                    ".bd-header", ".header-article", ".bd-footer", ".bd-footer-article", ".toc-item",
                    ".wy-nav-side", ".wy-breadcrumbs", ".sphx-glr-download", ".sphx-glr-footer",
                    ".contents", ".toctree-wrapper"))
DOCBOOK = dict(main=(), skip=(".navheader", ".navfooter", ".toc", ".list-of-tables",
                               ".list-of-figures", ".list-of-examples", "#banner", ".docnav",
                               "#navigation", ".breadcrumbs", ".legalnotice", ".revhistory",
                               ".authorgroup", ".author", ".copyright"))
TEXINFO = dict(main=(), skip=(".header", ".nav-panel", ".navigation", "table.menu", ".menu",
                              ".contents", ".shortcontents", "[class^=index-]", ".summary-letter",
                              "[class*=printindex]", ".mini-toc"),
               drop_lines=(r"Jump to:.*",))
MDBOOK = dict(main=("main",), skip=("#sidebar", "#menu-bar", ".nav-wrapper", ".nav-wide-wrapper"))

# Mallard pages and DocBook XML: metadata, index terms and media are not text.
XMLDOC = dict(main=(), skip=("info", "media", "comment", "indexterm", "articleinfo", "bookinfo",
                             "sectioninfo", "chapterinfo", "mediaobject", "imageobject",
                             "inlinemediaobject", "remark", "ui:thumb", "credit", "revision"))

QTDOC = dict(exclude=("*-members.html", "*-obsolete.html", "*/index.html", "*-module.html",
                     "*/classes.html", "*/functions.html", "*/annotated.html", "*/qmltypes.html",
                     "*/examples-*.html", "*-example.html", "*-example-*.html"),
             main=(".main",), skip=(".sidebar", ".navigationbar", ".header", ".footer", ".toc",
                                    ".sidebar-content", ".navigation", "[class*=summary]"))
DOC = "usr/share/doc"
_SPHINX_JUNK = ("*/_sources/*", "*/_modules/*", "*/genindex*.html", "*/search.html",
                "*/py-modindex.html", "*/objects.inv")
SOURCES: tuple[Source, ...] = tuple(sorted((  # kept in package order
    Source("apache2-doc", "2.4.71-1~deb12u1", (f"{DOC}/apache2-doc/manual/en/*.html",),
           exclude=("*/mod/quickreference.html", "*/mod/directives.html", "*/mod/index.html",
                    "*/sitemap.html", "*/glossary.html", "*/index.html"),
           main=("#page-content",),
           skip=("#page-header", "#path", "#footer", ".toplang", ".bottomlang", "#quickview",
                 ".top", "#comments_section", "#comments_thread", ".menu")),
    Source("aptitude-doc-en", "0.8.13-5", (f"{DOC}/aptitude/html/en/*.html",),
           exclude=("*/index.html",), **DOCBOOK),
    Source("autoconf-doc", "2.71-3", ("usr/share/info/autoconf.info*",), kind="info"),
    Source("automake", "1:1.16.5-1.3", ("usr/share/info/automake*.info*",), kind="info"),
    Source("bash-doc", "5.2.15-2", (f"{DOC}/bash/bashref.html",), **TEXINFO),
    Source("bind9-doc", "1:9.18.49-1~deb12u3", (f"{DOC}/bind9-doc/arm/*.html",),
           exclude=(*_SPHINX_JUNK, "*/index.html", "*/notes.html", "*/manpages.html"), **SPHINX),
    Source("binutils-doc", "2.40-2", ("usr/share/info/as.info*", "usr/share/info/ld.info*",
                                      "usr/share/info/binutils.info*", "usr/share/info/gprof.info*"),
           kind="info"),
    Source("borgbackup-doc", "1.2.4-1", (f"{DOC}/borgbackup/html/*.html",),
           exclude=(*_SPHINX_JUNK, "*/index.html", "*/changes.html", "*/authors.html"), **SPHINX),
    Source("clang-15-doc", "1:15.0.6-4", (f"{DOC}/clang-15/html/*.html",),
           exclude=(*_SPHINX_JUNK, "*/index.html", "*/AttributeReference.html",
                    "*/DiagnosticsReference.html", "*/ClangCommandLineReference.html",
                    "*/ReleaseNotes.html"), **SPHINX),
    Source("cmake-doc", "3.25.1-1", tuple(f"{DOC}/cmake-data/html/{d}/*.html"
                                          for d in ("manual", "guide", "command", "module", "policy")),
           exclude=(*_SPHINX_JUNK, "*/manual/cmake-*-reference.html"), **SPHINX),
    Source("coreutils", "9.1-1", ("usr/share/info/coreutils.info*",), kind="info"),
    Source("cppreference-doc-en-html", "20170409-2", ("usr/share/cppreference/doc/html/en/*.html",),
           exclude=("*/index.html", "*/symbol_index*", "*/links.html"),
           main=("#mw-content-text", "#content"),
           skip=(".t-navbar", "#siteSub", "#contentSub", ".printfooter", "#catlinks", ".editsection",
                 "#toc", ".toc", ".t-plot", ".mw-geshi-linenumbers", ".noprint", ".ambox")),
    Source("cvs", "2:1.12.13+real-28+deb12u1", (f"{DOC}/cvs/cvs.html", f"{DOC}/cvs/cvsclient.html"),
           **TEXINFO),
    Source("cython-doc", "0.29.32-2", (f"{DOC}/cython-doc/html/*.html",),
           exclude=(*_SPHINX_JUNK, "*/index.html", "*/changes.html"), **SPHINX),
    Source("debian-edu-doc-en", "2.12.23~deb12u1",
           (f"{DOC}/debian-edu-doc-en/debian-edu-bookworm-manual.html",),
           **DOCBOOK),
    Source("debian-faq", "11.1", (f"{DOC}/debian/FAQ/*.en.html",), exclude=("*/index.en.html",),
           **DOCBOOK),
    Source("debian-handbook", "11.20220922", (f"{DOC}/debian-handbook/html/en-US/*.html",),
           exclude=("*/index.html", "*/ix01.html"), **DOCBOOK),
    Source("debian-history", "2.28", (f"{DOC}/debian-history/docs/*.en.html",),
           exclude=("*/index.en.html",), **DOCBOOK),
    Source("debian-policy", "4.6.2.0", (f"{DOC}/debian-policy/*.html",),
           exclude=(*_SPHINX_JUNK, "*/index.html", "*-1.html", "*/upgrading-checklist.html"),
           **SPHINX),
    Source("debian-reference-en", "2.100", ("usr/share/debian-reference/*.en.html",),
           exclude=("*/index.en.html",), **DOCBOOK),
    Source("debmake-doc", "1.17-7", (f"{DOC}/debmake-doc/html/*.en.html",),
           exclude=("*/index.en.html",), **DOCBOOK),
    Source("developers-reference", "12.18", ("usr/share/developers-reference/*.html",),
           exclude=(*_SPHINX_JUNK, "*/index.html", "*/developers-reference.html"), **SPHINX),
    Source("diffutils", "1:3.8-4", ("usr/share/info/diffutils.info*",), kind="info"),
    Source("docutils-doc", "0.19+dfsg-6", (f"{DOC}/docutils-doc/docs/*.html",),
           exclude=("*/index.html", "*/HISTORY.html", "*/RELEASE-NOTES.html"),
           main=(".document",), skip=(".header", ".footer", ".contents")),
    Source("dovecot-core", "1:2.3.19.1+dfsg1-2.1+deb12u7", (f"{DOC}/dovecot-core/wiki/*.txt*",),
           kind="text"),
    Source("erlang-doc", "1:25.2.3+dfsg-1+deb12u4",
           (f"{DOC}/erlang-doc/doc/*.html", f"{DOC}/erlang-doc/lib/*.html", f"{DOC}/erlang-doc/erts-*.html"),
           exclude=("*/wx-*", "*/jinterface-*", "*/index.html", "*/users_guide.html", "*/part.html",
                    "*/ref_man.html", "*/release_notes.html", "*/notes.html", "*/api.html",
                    "*/search.html", "*/man_index.html", "*/applications.html", "*/glossary.html",
                    "*/*_app.html", "*/chunks/*"),
           main=("#content",), skip=("#leftnav", ".footer", "#loadscrollpos")),
    Source("ffmpeg-doc", "7:5.1.9-0+deb12u1", (f"{DOC}/ffmpeg/manual/*.html",),
           exclude=("*-all.html", "*/index.html"), **TEXINFO),
    Source("findutils", "4.9.0-4", ("usr/share/info/find*.info*",), kind="info"),
    Source("fish-common", "3.6.0-3.1+deb12u1", (f"{DOC}/fish/*.html",),
           exclude=(*_SPHINX_JUNK, "*/index.html", "*/relnotes.html"), **SPHINX),
    Source("gettext-doc", "0.21-12", (f"{DOC}/gettext/gettext_*.html", f"{DOC}/gettext/FAQ.html",
                                      f"{DOC}/gettext/tutorial.html"),
           exclude=("*/gettext_toc.html", "*/gettext_abt.html", "*/gettext_fot.html"), **TEXINFO),
    Source("ghc-doc", "9.0.2-4", (f"{DOC}/ghc-doc/html/users_guide/*.html",),
           exclude=(*_SPHINX_JUNK, "*/index.html", "*/flags.html", "*/[0-9]*-notes.html"),
           **SPHINX),
    Source("gimp-help-en", "2.10.34-2", ("usr/share/gimp/2.0/help/en/*.html",),
           exclude=("*/index.html", "*/ix01.html"), **DOCBOOK),
    Source("git-doc", "1:2.39.5-0+deb12u3", (f"{DOC}/git-doc/*.html",),
           exclude=("*/index.html", "*/RelNotes/*"), main=("#content",),
           skip=("#header", "#footer", "#toc", "#footnotes")),
    Source("gnome-devel-docs", "40.3-1", ("usr/share/help/C/*.page",), exclude=("*/gnome-devel-demos/*",),
           **XMLDOC),
    Source("gnome-user-docs", "43.0-2", ("usr/share/help/C/*.page",), **XMLDOC),
    Source("gnu-standards", "2022.03.23-0.1", (f"{DOC}/gnu-standards/*.html",), **TEXINFO),
    Source("gnucash-docs", "4.13-1", (f"{DOC}/gnucash-docs/gnucash-guide-en/*.html",
                                      f"{DOC}/gnucash-docs/gnucash-help-en/*.html"),
           exclude=("*/index.html", "*/ix01.html"), **DOCBOOK),
    Source("gnupg", "2.2.40-1.1+deb12u2", ("usr/share/info/gnupg.info*",), kind="info"),
    Source("gnuplot-doc", "5.4.4+dfsg1-2", (f"{DOC}/gnuplot/htmldocs/*.html",),
           exclude=("*/index.html", "*/gnuplot.html", "*/Index*.html"), **TEXINFO),
    Source("grep", "3.8-5", ("usr/share/info/grep.info*",), kind="info"),
    Source("guile-3.0-doc", "3.0.8-2", ("usr/share/info/guile-3.0/guile.info*",), kind="info"),
    Source("gzip", "1.12-1", ("usr/share/info/gzip.info*",), kind="info"),
    Source("haproxy-doc", "2.6.12-1+deb12u4", (f"{DOC}/haproxy/html/*.html",),
           main=("#page-content", ".container-fluid"), skip=("#sidebar", ".navbar", "#tocform", ".toc")),
    Source("harden-doc", "3.19+nmu1", (f"{DOC}/harden-doc/html/en-US/*.html",),
           exclude=("*/index.html", "*/ix01.html"), **DOCBOOK),
    Source("haskell98-report", "20080907-10", (f"{DOC}/haskell98-report/html/*.html",),
           exclude=("*/index*.html", "*/*-index.html")),
    Source("icinga2-doc", "2.13.6-2+deb12u2", (f"{DOC}/icinga2/markdown/*.md.gz",),
           exclude=("*/*changelog*", "*/*-migrating-*"), kind="text"),
    Source("imagemagick-6-doc", "8:6.9.11.60+dfsg-1.6+deb12u15",
           (f"{DOC}/imagemagick-6-common/html/www/*.html",),
           exclude=("*/api/*", "*/index.html", "*/changelog.html", "*/sitemap.html", "*/links.html",
                    "*/download.html", "*/binary-releases.html", "*/mailing-list.html"),
           main=("[role=main]", "main"), skip=(".magick-header", "footer", ".magick-footer")),
    Source("installation-guide-amd64", "20230508+deb12u1", (f"{DOC}/installation-guide-amd64/en/*.html",),
           exclude=("*/index.html",), **DOCBOOK),
    Source("jargon-text", "4.4.7-4.1", (f"{DOC}/jargon-text/jargon.txt.gz",), kind="jargon"),
    Source("kea-doc", "2.2.0-6", (f"{DOC}/kea/html/*.html",),
           exclude=(*_SPHINX_JUNK, "*/index.html", "*/man/*", "*/api.html"), **SPHINX),
    Source("kicad-doc-en", "6.0.11+dfsg-1", (f"{DOC}/kicad/help/en/*.html",),
           main=("#content",), skip=("#header", "#footer", "#toc")),
    Source("krb5-doc", "1.20.1-2+deb12u5", (f"{DOC}/krb5-doc/*.html",),
           exclude=(*_SPHINX_JUNK, "*/index.html", "*/appdev/refs/*", "*/mitK5*"), **SPHINX),
    Source("libglib2.0-doc", "2.74.6-2+deb12u9", ("usr/share/gtk-doc/html/*.html",),
           exclude=("*/index.html", "*/api-index-*.html", "*/annotation-glossary.html",
                    "*/deprecated-api-index.html", "*/ix*.html", "*/*-changes*.html"),
           skip=(".navigation", "table.navigation", ".footer", ".refsynopsisdiv",
                 ".informaltable", ".toc")),
    Source("libgtk-3-doc", "3.24.38-2~deb12u3", ("usr/share/gtk-doc/html/*.html",),
           exclude=("*/index.html", "*/api-index-*.html", "*/annotation-glossary.html",
                    "*/deprecated-api-index.html", "*/ix*.html", "*/*-changes*.html"),
           skip=(".navigation", "table.navigation", ".footer", ".refsynopsisdiv",
                 ".informaltable", ".toc")),
    Source("libreoffice-help-en-us", "4:7.4.7-1+deb12u14", ("usr/share/libreoffice/help/en-US/text/*.html",),
           main=("#DisplayArea",), skip=("#TopLeftHeader", "footer", "#SearchFrame", "#Index",
                                        "#DonationFrame", ".relatedtopics", "#Bookmarks",
                                        ".noteicon", "#modules-nav")),
    Source("libtool-doc", "2.4.7-7~deb12u1", ("usr/share/info/libtool.info*",), kind="info"),
    Source("libvirt-doc", "9.0.0-4+deb12u2", (f"{DOC}/libvirt-doc/html/*.html",),
           exclude=("*/index.html", "*/html/html/*", "*/news.html", "*/manpages/*", "*/docs.html",
                    "*/search.html", "*/404.html"),
           main=("#content",), skip=("#nav", "#footer", ".contents", "#header")),
    Source("lilypond-doc-html", "2.24.1-2", tuple(
               f"{DOC}/lilypond/html/Documentation/{b}/*.html"
               for b in ("learning", "notation", "usage", "extending", "essay", "contributor", "web")),
           exclude=("*-big-page.html", "*/index.html"), **TEXINFO),
    Source("linux-doc-6.1", "6.1.192-2", (f"{DOC}/linux-doc-6.1/html/*.html",),
           exclude=(*_SPHINX_JUNK, "*/process/maintainers.html", "*/translations/*",
                    "*/index.html", "*/abi-*.html"), **SPHINX),
    Source("llvm-15-doc", "1:15.0.6-4", (f"{DOC}/llvm-15-doc/html/*.html",),
           exclude=(*_SPHINX_JUNK, "*/index.html", "*/AMDGPU/*", "*/ReleaseNotes.html"), **SPHINX),
    Source("m4", "1.4.19-3", ("usr/share/info/m4.info*",), kind="info"),
    Source("maint-guide", "1.2.53", (f"{DOC}/maint-guide/html/*.en.html",),
           exclude=("*/index.en.html",), **DOCBOOK),
    Source("manpages", "6.03-2", ("usr/share/man/man[1-8]/*.gz",), kind="man"),
    Source("manpages-dev", "6.03-2", ("usr/share/man/man[1-8]/*.gz",), kind="man"),
    Source("mate-user-guide", "1.26.0-1", ("usr/share/help/C/mate-user-guide/*.xml",),
           exclude=("*/legal.xml",), **XMLDOC),
    Source("maxima-doc", "5.46.0-11", (f"{DOC}/maxima-doc/html/maxima_*.html",
                                       f"{DOC}/maxima-doc/html/intromax.html"),
           exclude=("*/maxima_singlepage.html", "*/maxima_toc.html", "*/maxima_abt.html"), **TEXINFO),
    Source("mercurial-common", "6.3.2-1+deb12u1",
           ("usr/lib/python3/dist-packages/mercurial/helptext/*.txt",), kind="text"),
    Source("mit-scheme-doc", "12.1-3", (f"{DOC}/mit-scheme-doc/html/mit-scheme-*/*.html",),
           exclude=("*/index.html", "*Index*.html"), **TEXINFO),
    Source("mutt", "2.2.12-0.1~deb12u2", (f"{DOC}/mutt/html/*.html",),
           exclude=("*/index.html", "*/manual.html"), **DOCBOOK),
    Source("nodejs-doc", "18.20.4+dfsg-1~deb12u3", (f"{DOC}/nodejs/api/*.html",),
           exclude=("*/all.html", "*/index.html"), main=("#apicontent",),
           skip=("#column2", "#toc", "#gtoc", ".srclink", "header", ".mark")),
    Source("octave-doc", "7.3.0-2", (f"{DOC}/octave/octave.html/*.html",),
           exclude=("*/index.html", "*Index*.html", "*/XREF*"), **TEXINFO),
    Source("openjdk-17-doc", "17.0.21.1+2-1~deb12u1",  # every module's pages, not the indexes
           (f"{DOC}/openjdk-17-jre-headless/api/*/*.html",),
           exclude=("*/class-use/*", "*/package-tree.html", "*/package-use.html", "*/module-summary.html",
                    "*/api/index-files/*", "*/api/legal/*", "*/api/resources/*", "*/api/script-dir/*"),
           main=("main",), skip=("header", "footer", ".summary-list", ".summary", ".inherited-list",
                                 ".sub-title", ".inheritance", ".legal-copy", ".flex-header")),
    Source("perl-doc", "5.36.0-7+deb12u4", ("usr/share/perl/5.36.0/pod/*.pod",),
           exclude=("*/perltoc.pod", "*/perlhist.pod", "*/perlartistic.pod", "*/perlgpl.pod"),
           kind="pod"),
    Source("postfix-doc", "3.7.11-0+deb12u1", (f"{DOC}/postfix/html/*_README.html",)),
    Source("postgis-doc", "3.3.2+dfsg-1", (f"{DOC}/postgis-doc/postgis.html",), **DOCBOOK),
    Source("postgresql-doc-15", "15.20-0+deb12u1", (f"{DOC}/postgresql-doc-15/html/*.html",),
           exclude=("*/index.html", "*/bookindex.html", "*/release-*.html", "*/biblio.html"),
           **DOCBOOK),
    Source("pspp", "1.6.2-2", (f"{DOC}/pspp/pspp.html/*.html",), exclude=("*/index.html",), **TEXINFO),
    Source("python-astropy-doc", "5.2.1-2+deb12u1", (f"{DOC}/python-astropy-doc/html/*.html",),
           exclude=(*_SPHINX_JUNK, "*/api/*", "*/generated/*", "*/index.html", "*/whatsnew/*",
                    "*/changelog*", "*/credits.html", "*/license.html"), **SPHINX),
    Source("python-celery-doc", "5.2.6-5", (f"{DOC}/python-celery-doc/html/*.html",),
           exclude=(*_SPHINX_JUNK, "*/reference/*", "*/history/*", "*/changelog.html",
                    "*/index.html", "*/copyright.html"), **SPHINX),
    Source("python-dask-doc", "2022.12.1+dfsg-2", (f"{DOC}/python-dask-doc/html/*.html",),
           exclude=(*_SPHINX_JUNK, "*/generated/*", "*/index.html", "*/changelog.html",
                    "*/api.html", "*/*-api.html"), **SPHINX),
    Source("python-django-doc", "3:3.2.25-0+deb12u7", (f"{DOC}/python-django-doc/html/*.html",),
           exclude=(*_SPHINX_JUNK, "*/contents.html", "*/index.html"),
           main=("[role=main]", "#yui-main", "#bd"),
           skip=("#hd", "#ft", ".nav", "#global-nav", "[role=complementary]")),
    Source("python-ipython-doc", "8.5.0-4", (f"{DOC}/python-ipython-doc/html/*.html",),
           exclude=(*_SPHINX_JUNK, "*/api/*", "*/whatsnew/*", "*/index.html"), **SPHINX),
    Source("python-pandas-doc", "1.5.3+dfsg-2", tuple(f"{DOC}/python-pandas-doc/html/{d}/*.html"
                                                      for d in ("user_guide", "getting_started",
                                                                "development")),
           exclude=(*_SPHINX_JUNK, "*/index.html"), **SPHINX),
    Source("python-scipy-doc", "1.10.1-2", (f"{DOC}/python-scipy-doc/html/tutorial/*.html",
                                            f"{DOC}/python-scipy-doc/html/dev/*.html"),
           exclude=(*_SPHINX_JUNK, "*/index.html"), **SPHINX),
    Source("python-skimage-doc", "0.19.3-8", (f"{DOC}/python-skimage-doc/html/user_guide/*.html",
                                              f"{DOC}/python-skimage-doc/html/*.html"),
           exclude=(*_SPHINX_JUNK, "*/api/*", "*/auto_examples/*", "*/release_notes/*",
                    "*/index.html", "*/gitwash/*"), **SPHINX),
    Source("python-sklearn-doc", "1.2.1+dfsg-1", (f"{DOC}/python-sklearn-doc/html/*.html",),
           exclude=(*_SPHINX_JUNK, "*/generated/*", "*/auto_examples/*", "*/index.html",
                    "*/classes.html", "*/whats_new*", "*/testimonials/*", "*/authors*.html",
                    "*/contents.html", "*/*team*.html", "*/min_dependency_*.html",
                    "*/tune_toc.html"), **SPHINX),
    Source("python-sqlalchemy-doc", "1.4.46+ds1-1", (f"{DOC}/python-sqlalchemy-doc/html/*.html",),
           exclude=(*_SPHINX_JUNK, "*/changelog/*", "*/index.html", "*/contents.html",
                    "*/copyright.html"),
           main=("#docs-body",), skip=("#docs-sidebar", "#docs-top-navigation-container",
                                       "#docs-bottom-navigation", "#docs-header",
                                       ".docs-navigation-links")),
    Source("python-sympy-doc", "1.11.1-1", (f"{DOC}/python-sympy-doc/html/*.html",),
           exclude=(*_SPHINX_JUNK, "*/index.html"), **SPHINX),
    Source("python-xarray-doc", "2023.01.0-1.1", (f"{DOC}/python-xarray-doc/html/*.html",),
           exclude=(*_SPHINX_JUNK, "*/generated/*", "*/index.html", "*/whats-new.html",
                    "*/api.html", "*/api-hidden.html"), **SPHINX),
    Source("python3.11-doc", "3.11.2-6+deb12u9", (f"{DOC}/python3.11/html/*.html",),
           exclude=(*_SPHINX_JUNK, "*/contents.html", "*/index.html", "*/whatsnew/changelog.html",
                    "*/download.html", "*/license.html", "*/copyright.html", "*/bugs.html",
                    "*/about.html"), **SPHINX),
    Source("qtbase5-doc-html", "5.15.8+dfsg-11+deb12u3", ("usr/share/qt5/doc/*.html",), **QTDOC),
    Source("qtdeclarative5-doc-html", "5.15.8+dfsg-3", ("usr/share/qt5/doc/*.html",), **QTDOC),
    Source("qtquickcontrols2-5-doc-html", "5.15.8+dfsg-2", ("usr/share/qt5/doc/*.html",), **QTDOC),
    Source("qttools5-doc-html", "5.15.8-2", ("usr/share/qt5/doc/*.html",), **QTDOC),
    Source("r-doc-html", "4.2.2.20221110-2", ("usr/share/R/doc/manual/*.html",),
           exclude=("*/index.html",), **TEXINFO),
    Source("racket-doc", "8.7+dfsg1-1", tuple(f"{DOC}/racket/{b}/*.html" for b in (
               "guide", "reference", "style", "scribble", "more", "quick", "continue", "getting-started",
               "htdp-langs", "teachpack", "ts-guide", "web-server", "pkg", "raco", "inside", "foreign",
               "syntax", "db", "plot", "math", "gui", "framework", "pict", "slideshow", "rackunit",
               "drracket", "redex", "plai", "lazy", "datalog", "net", "file", "json", "xml", "profile",
               "errortrace", "contract-profile", "optimization-coach", "macro-debugger", "compatibility")),
           exclude=("*/index.html",), main=(".main", ".maincolumn"),
           skip=(".tocset", ".navsettop", ".navsetbottom", ".tocview", ".tocsub", "#contextindicator",
                 ".versionbox", ".SearchBox")),
    Source("rust-doc", "1.63.0+dfsg1-2",
           tuple(f"{DOC}/rust-doc/html/{b}/*.html" for b in (
               "book", "reference", "nomicon", "rust-by-example", "edition-guide", "embedded-book",
               "rustc", "rustdoc", "cargo", "unstable-book")),
           exclude=("*/print.html", "*/toc.html", "*/404.html"), **MDBOOK),
    Source("sagemath-doc", "9.5-6", tuple(f"{DOC}/sagemath/html/en/{b}/*.html" for b in (
               "tutorial", "thematic_tutorials", "constructions", "faq", "a_tour_of_sage",
               "installation", "developer", "prep")),
           exclude=(*_SPHINX_JUNK, "*/index.html"), **SPHINX),
    Source("sbcl-doc", "2:2.2.9-1", ("usr/share/info/sbcl.info*",), kind="info"),
    Source("screen", "4.9.0-4", ("usr/share/info/screen.info*",), kind="info"),
    Source("sed", "4.9-1+deb12u1", ("usr/share/info/sed.info*",), kind="info"),
    Source("sphinx-doc", "5.3.0-4", (f"{DOC}/sphinx-doc/html/*.html",),
           exclude=(*_SPHINX_JUNK, "*/changes.html", "*/index.html", "*/contents.html"), **SPHINX),
    Source("sqlite3-doc", "3.40.1-2+deb12u2", (f"{DOC}/sqlite3/*.html",),
           exclude=("*/releaselog/*", "*/changes.html", "*/chronology.html", "*/sitemap.html",
                    "*/keyword_index.html", "*/toc.html", "*/docs.html", "*/news.html",
                    "*/index.html", "*/c3ref/*", "*/syntax/*", "*/session/*", "*/doclist.html",
                    "*/support.html", "*/prosupport.html", "*/copyright-release.html"),
           skip=(".nosearch", ".menu", ".mobile-menu", ".fancy-toc1", ".fancy-toc2", ".fancy_toc",
                 "#toc_header", "#toc_sub", "#submenu", ".footer"),
           drop_lines=(r"This page last modified on .*",)),
    Source("swi-prolog-doc", "9.0.4+dfsg-2", ("usr/share/swi-prolog/doc/Manual/*.html",
                                              "usr/share/swi-prolog/doc/packages/*.html"),
           exclude=("*/index.html", "*/DocIndex.html", "*/summary.html", "*/libsummary.html",
                    "*/Contents.html", "*/examples/*"), skip=(".navigate",)),
    Source("texinfo", "6.8-6+b1", (f"{DOC}/texinfo/html/*.html",),
           exclude=("*/index.html", "*Index*.html"), **TEXINFO),
    Source("tomcat10-docs", "10.1.60-1~deb12u1", ("usr/share/tomcat10-docs/docs/*.html",),
           exclude=("*/api/*", "*/changelog.html", "*/index.html", "*/elapi/*", "*/servletapi/*",
                    "*/jspapi/*", "*/websocketapi/*", "*/jaspicapi/*", "*/annotationapi/*"),
           main=("#content",), skip=("header", "footer", "nav")),
    Source("twisted-doc", "22.4.0-4+deb12u1", (f"{DOC}/twisted-doc/html/*.html",),
           exclude=(*_SPHINX_JUNK, "*/api/*", "*/NEWS.html", "*/index.html", "*/examples/*"),
           **SPHINX),
    Source("valgrind", "1:3.19.0-1", (f"{DOC}/valgrind/html/*.html",),
           exclude=("*/dist.*", "*/index.html", "*/license.*", "*/manual.html", "*/FAQ.html",
                    "*/QuickStart.html", "*/tech-docs.html", "*/licenses.html"),
           **DOCBOOK),
    Source("vim-runtime", "2:9.0.1378-2+deb12u2", ("usr/share/vim/vim90/doc/*.txt",),
           exclude=("*/help.txt", "*/quickref.txt", "*/index.txt", "*/version[4-9].txt",
                    "*/todo.txt", "*/sponsor.txt", "*/uganda.txt", "*/tags"), kind="text"),
    Source("weechat-doc", "3.8-1", (f"{DOC}/weechat-doc/html/*.en.html",),
           main=("#content",), skip=("#header", "#footer", "#toc")),
    Source("wget", "1.21.3-1+deb12u1", ("usr/share/info/wget.info*",), kind="info"),
    Source("wireshark-doc", "4.0.17-0+deb12u3", (f"{DOC}/wireshark/wsug_html_chunked/*.html",
                                                 f"{DOC}/wireshark/wsdg_html_chunked/*.html"),
           exclude=("*/index.html",), **DOCBOOK),
    Source("zsh-doc", "5.9-4", (f"{DOC}/zsh-common/html/*.html",),
           exclude=("*/index.html", "*Index*.html", "*/The-Z-Shell-Manual.html", "*/zsh_toc.html",
                    "*/zsh_abt.html", "*/zsh_ovr.html"),
           main=TEXINFO["main"], skip=TEXINFO["skip"],
           drop_lines=(*TEXINFO["drop_lines"], r"- (Table of Contents|Previous Chapter|Next Chapter)")),
), key=lambda s: s.package))


# ----------------------------------------------------------------------------- HTML → text
VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())
BLOCK2 = frozenset((
    "address article aside blockquote body caption center details dialog div dl fieldset "
    "figcaption figure footer h1 h2 h3 h4 h5 h6 header hgroup hr html legend main ol p pre "
    "section summary table ul "
    # Mallard (GNOME help .page files) and DocBook XML sources, read with the same parser
    "page title subtitle note steps terms tree example quote synopsis "
    "para simpara formalpara sect1 sect2 sect3 sect4 sect5 chapter article appendix preface "
    "itemizedlist orderedlist variablelist glosslist segmentedlist informaltable tgroup "
    "tip warning caution important sidebar abstract blockquote").split())
BLOCK1 = frozenset("br dd dt li tr item listitem varlistentry term glossentry glossterm glossdef "
                   "row entry".split())
PRE = frozenset("pre xmp listing plaintext screen programlisting literallayout".split())
CELL = frozenset("td th".split())
# A start tag that implicitly ends the open element of the same group (HTML's optional end tags).
IMPLIED_END = {"p": ("p",), "li": ("li",), "dt": ("dt", "dd"), "dd": ("dt", "dd"),
               "tr": ("tr", "td", "th"), "td": ("td", "th"), "th": ("td", "th"), "option": ("option",)}
IMPLIED_END_STOP = frozenset("ul ol dl table tbody thead tfoot div section blockquote body".split())
_WS = re.compile(r"\s+")
_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u200b\u200c\u200d\u2060\ufeff"))


class _Node:
    __slots__ = ("tag", "attrs", "children")

    def __init__(self, tag: str, attrs: dict[str, str]):
        self.tag = tag
        self.attrs = attrs
        self.children: list[_Node | str] = []

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class _TreeBuilder(HTMLParser):
    """A forgiving element tree: unmatched end tags are ignored, unclosed ones end with a parent."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = _Node("#root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in IMPLIED_END:
            for i in range(len(self.stack) - 1, 0, -1):
                t = self.stack[i].tag
                if t in IMPLIED_END[tag]:
                    del self.stack[i:]
                    break
                if t in IMPLIED_END_STOP:
                    break
        node = _Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(_Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


class _Selectors:
    """'tag', '#id', '.class', 'tag.class', '[attr=value]', 'tag[attr=value]', and
    '[attr^=prefix]' / '[attr*=substring]' (alone)."""

    _SEL = re.compile(r"^([a-z0-9:]*)(?:#([\w-]+))?((?:\.[\w-]+)*)(?:\[([\w-]+)([\^*]?)=([^\]]*)\])?$")

    def __init__(self, selectors: Iterable[str]):
        self.tags: set[str] = set()
        self.ids: set[str] = set()
        self.classes: set[str] = set()
        self.other: list[tuple[str, str, frozenset[str], str, str]] = []
        self.partial: list[tuple[str, str, str]] = []  # [attr^=v] starts with, [attr*=v] contains
        for s in selectors:
            m = self._SEL.match(s)
            if not m:
                raise ValueError(f"unsupported selector {s!r}")
            tag, id_, cls, attr, op, value = m.groups()
            classes = frozenset(c for c in cls.split(".") if c)
            if op:
                self.partial.append((attr, op, value))
            elif tag and not (id_ or classes or attr):
                self.tags.add(tag)
            elif id_ and not (tag or classes or attr):
                self.ids.add(id_)
            elif len(classes) == 1 and not (tag or id_ or attr):
                self.classes |= classes
            else:
                self.other.append((tag, id_ or "", classes, attr or "", value or ""))

    def match(self, node: _Node) -> bool:
        if node.tag in self.tags or node.attrs.get("id") in self.ids:
            return True
        classes = node.classes
        if classes & self.classes:
            return True
        for attr, op, value in self.partial:
            v = node.attrs.get(attr)
            if v is not None and (v.startswith(value) if op == "^" else value in v):
                return True
        for tag, id_, cls, attr, value in self.other:
            if ((not tag or node.tag == tag) and (not id_ or node.attrs.get("id") == id_)
                    and cls <= classes and (not attr or node.attrs.get(attr) == value)):
                return True
        return False


@functools.lru_cache(maxsize=256)
def _selectors(selectors: tuple[str, ...]) -> _Selectors:
    return _Selectors(selectors)


def _find(node: _Node, sel: _Selectors) -> _Node | None:
    """The first element (document order) under node that sel matches."""
    todo = [node]
    while todo:
        n = todo.pop()
        if sel.match(n):
            return n
        todo.extend(c for c in reversed(n.children) if isinstance(c, _Node))
    return None


class _Writer:
    """Collects text runs and block breaks; join() turns them into normalised paragraphs."""

    def __init__(self) -> None:
        self.blocks: list[tuple[int, str]] = []   # (separator strength before, text)
        self.run: list[str] = []
        self.sep = 0
        self.bullet = False
        self.chars = 0
        self.link_chars = 0

    def text(self, data: str, link: bool) -> None:
        self.run.append(data)
        n = len(data.strip())
        self.chars += n
        if link:
            self.link_chars += n

    def brk(self, strength: int) -> None:
        self._flush()
        self.sep = max(self.sep, strength)

    def _flush(self) -> None:
        text = _WS.sub(" ", "".join(self.run)).strip()
        self.run.clear()
        if text:
            if self.bullet:
                text, self.bullet = "- " + text, False
            self.blocks.append((self.sep, text))
            self.sep = 0

    def verbatim(self, raw: str) -> None:
        self._flush()
        lines = [ln.rstrip() for ln in raw.expandtabs(8).split("\n")]
        while lines and not lines[0].strip():
            lines.pop(0)
        while lines and not lines[-1].strip():
            lines.pop()
        if lines and len(lines) <= MAX_PRE_LINES and sum(map(len, lines)) <= MAX_PRE_CHARS:
            self.blocks.append((2, "\n".join(lines)))
            self.bullet = False
        self.sep = 2

    def join(self) -> str:
        self._flush()
        out = []
        for i, (sep, text) in enumerate(self.blocks):
            if i:
                out.append("\n" if sep == 1 else "\n\n")
            out.append(text)
        return "".join(out)


def html_to_text(markup: str, main: Sequence[str] = (), skip: Sequence[str] = ()) -> tuple[str, float]:
    """(plain text, fraction of its characters that were link text) of one HTML page.

    Elements matching SKIP_ALWAYS or skip are dropped with their content. If one of the main
    selectors matches (tried in order), only that element's content is kept. Block elements
    become paragraph breaks, list items / table rows / <br> line breaks (items get "- "),
    table cells are joined with " | "; whitespace is collapsed outside <pre>. A <pre> block is
    kept verbatim (tabs expanded, trailing spaces cut) if it has at most MAX_PRE_LINES lines
    and MAX_PRE_CHARS characters, else dropped.
    """
    builder = _TreeBuilder()
    builder.feed(markup)
    builder.close()
    root = builder.root
    for selector in main:
        found = _find(root, _selectors((selector,)))
        if found is not None:
            root = found
            break
    skipper = _selectors((*SKIP_ALWAYS, *skip))
    w = _Writer()
    pre: list[str] | None = None  # the open <pre>'s text
    pre_depth = link_depth = 0
    todo: list[tuple[_Node | str, bool]] = [(root, False)]
    while todo:
        item, closing = todo.pop()
        if isinstance(item, str):
            if pre is not None:
                pre.append(item)
            else:
                w.text(item, link_depth > 0)
            continue
        tag = item.tag
        if closing:
            if tag in PRE:
                pre_depth -= 1
                if pre_depth == 0 and pre is not None:
                    w.verbatim("".join(pre))
                    pre = None
            elif tag == "a" and "href" in item.attrs:
                link_depth -= 1
            if tag in BLOCK2:
                w.brk(2)
            elif tag in BLOCK1 and tag != "br":
                w.brk(1)
            continue
        if item is not root and skipper.match(item):
            continue
        if tag in PRE:
            pre_depth += 1
            if pre_depth == 1:
                w.brk(2)
                pre = []
        elif pre is not None:
            if tag == "br":
                pre.append("\n")
        elif tag in BLOCK2:
            w.brk(2)
        elif tag in BLOCK1:
            w.brk(1)
            if tag in ("li", "listitem") or (tag == "item" and not w.run):
                w.bullet = True
        elif tag in CELL:
            if "".join(w.run).strip():
                w.run.append(" | ")
        if tag == "a" and "href" in item.attrs:
            link_depth += 1
        if tag not in VOID:
            todo.append((item, True))
        todo.extend((c, False) for c in reversed(item.children))
    if pre is not None:
        w.verbatim("".join(pre))
    text = w.join()
    return text, (w.link_chars / w.chars if w.chars else 0.0)


def normalise(text: str) -> str:
    """NFC; no invisible characters, no-break spaces or trailing spaces; at most one blank
    line in a row."""
    text = unicodedata.normalize("NFC", text).translate(_INVISIBLE).replace("\r\n", "\n")
    text = text.replace("\u00a0", " ")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# ----------------------------------------------------------------------------- POD → text
_POD_CMD = re.compile(r"^=([a-zA-Z]\w*)\s*(.*)", re.S)
_POD_ENTITIES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}


def pod_inline(s: str) -> str:
    """Expand POD formatting codes (B<>, I<>, C<<< >>>, L<text|target>, E<gt>, X<>, ...)."""
    out: list[str] = []
    stack: list[tuple[str, str, list[str]]] = []  # (code, closing delimiter, outer buffer)
    buf = out
    i, n = 0, len(s)
    while i < n:
        if i + 1 < n and s[i] in "BCEFILSXZ" and s[i + 1] == "<":
            j = i + 1
            while j < n and s[j] == "<":
                j += 1
            k = j - (i + 1)
            if k > 1:
                if j < n and s[j].isspace():
                    j += 1
                close = " " + ">" * k
            else:
                close = ">"
            stack.append((s[i], close, buf))
            buf = []
            i = j
            continue
        if stack and s.startswith(stack[-1][1], i):
            code, close, outer = stack.pop()
            inner = "".join(buf)
            buf = outer
            buf.append(_pod_code(code, inner.strip() if len(close) > 1 else inner))
            i += len(close)
            continue
        buf.append(s[i])
        i += 1
    while stack:  # unterminated codes: keep their text
        code, close, outer = stack.pop()
        outer.append(_pod_code(code, "".join(buf)))
        buf = outer
    return "".join(out)


def _pod_code(code: str, inner: str) -> str:
    if code in "XZ":
        return ""
    if code == "E":
        if inner in _POD_ENTITIES:
            return _POD_ENTITIES[inner]
        if re.fullmatch(r"0x[0-9a-fA-F]+|0[0-7]*|\d+", inner):
            return chr(int(inner, 0) if not re.fullmatch(r"0[0-7]+", inner) else int(inner, 8))
        return html.unescape(f"&{inner};")
    if code == "L":
        if "|" in inner:
            return inner.split("|", 1)[0]
        if re.match(r"\w+://", inner):
            return inner
        name, _, section = inner.partition("/")
        section = section.strip('"')
        return f"{section} in {name}" if name and section else (section or name)
    return inner


def pod_to_text(source: str) -> str:
    """Plain text of a POD document: headings and items as paragraphs, formatting codes
    expanded, verbatim paragraphs kept up to MAX_PRE_LINES lines, =begin/=for blocks dropped."""
    paras = re.split(r"\n[ \t]*\n", source.replace("\r\n", "\n"))
    out: list[str] = []
    in_pod = source.lstrip().startswith("=")
    skipping: str | None = None   # =begin FORMAT being skipped
    verbatim: list[str] = []

    def flush_verbatim() -> None:
        if verbatim:
            lines = "\n".join(verbatim).expandtabs(8).split("\n")
            if len(lines) <= MAX_PRE_LINES and sum(map(len, lines)) <= MAX_PRE_CHARS:
                out.append("\n".join(ln.rstrip() for ln in lines))
            verbatim.clear()

    for para in paras:
        if not para.strip():
            continue
        m = _POD_CMD.match(para)
        if m:
            cmd, arg = m.group(1), m.group(2).strip()
            if cmd == "cut":
                in_pod = False
                flush_verbatim()
                continue
            in_pod = True
            if skipping:
                if cmd == "end" and arg.split()[:1] == [skipping]:
                    skipping = None
                continue
            flush_verbatim()
            if cmd.startswith("head"):
                out.append(pod_inline(_WS.sub(" ", arg)))
            elif cmd == "item":
                label = _WS.sub(" ", arg)
                if label in ("*", "") or re.fullmatch(r"\d+\.?", label):
                    out.append("- " if label in ("*", "") else f"{label.rstrip('.')}. ")
                else:
                    out.append(pod_inline(label))
            elif cmd == "begin":
                fmt = arg.split()[:1]
                if fmt and fmt[0] not in ("text", ":text"):
                    skipping = fmt[0]
            continue  # =pod =over =back =encoding =for =end
        if not in_pod or skipping:
            continue
        if para[0] in " \t":
            verbatim.append(para)
            continue
        flush_verbatim()
        text = pod_inline(_WS.sub(" ", para).strip())
        if out and re.fullmatch(r"- |\d+\. ", out[-1]):  # the text of a bullet / numbered item
            out[-1] += text
        else:
            out.append(text)
    flush_verbatim()
    return "\n\n".join(p for p in out if p.strip())


# ----------------------------------------------------------------------------- Info → text
_INFO_HEADER = re.compile(r"^File: [^,]+,\s+Node: ([^,\n]+)(.*)$", re.M)
_INFO_UNDERLINE = re.compile(r"^([*=\-.])\1{2,}$")


def info_documents(text: str) -> list[str]:
    """One document per top-level chapter of an Info manual (a node whose Up is Top and its
    following subnodes); menus, the Top node, indexes and node headers dropped, *note refs
    turned into 'see X'."""
    docs: list[list[str]] = []
    for node in text.split("\x1f"):
        node = node.lstrip("\n")
        m = _INFO_HEADER.match(node)
        if not m:
            continue  # preamble, Tag Table, Indirect table
        name, rest = m.group(1).strip(), m.group(2)
        up = re.search(r"Up:\s*([^,\n]+)", rest)
        if name == "Top" or "Index" in name or name.startswith(("Concept", "Function ", "Variable ")):
            if "Index" in name or name == "Top":
                docs.append([])  # an index or Top ends the chapter before it
            continue
        body = node[m.end():]
        body = re.split(r"^\* Menu:", body, maxsplit=1, flags=re.M)[0]
        body = re.sub(r"\*([Nn])ote\s+([^:]+?)::", lambda x: ("See " if x.group(1) == "N" else "see ")
                      + x.group(2), body)
        body = re.sub(r"\*([Nn])ote\s+([^:]+?):\s*[^.,]*[.,]", lambda x: ("See " if x.group(1) == "N"
                                                                         else "see ") + x.group(2), body)
        lines = [ln.rstrip() for ln in body.split("\n") if not _INFO_UNDERLINE.match(ln.strip())]
        if up is None or up.group(1).strip() in ("Top", "(dir)") or not docs:
            docs.append([])
        docs[-1].append("\n".join(lines))
    return ["\n\n".join(d) for d in docs if d]


# ----------------------------------------------------------------------------- Jargon File
def jargon_documents(text: str) -> list[str]:
    """The Jargon File (jargon-text's jargon.txt): one document per chapter/appendix and one
    per initial letter of the glossary; the 3-space indent is removed and paragraphs unwrapped."""
    docs: list[tuple[str, list[str]]] = []
    lines = text.replace("\u00a0", " ").split("\n")
    start = next(i for i, ln in enumerate(lines) if ln.startswith("Chapter 1."))
    in_glossary = False
    for ln in lines[start:]:
        if re.match(r"^(Chapter \d+\.|Appendix [A-Z]\.|Bibliography|Glossary)", ln):
            in_glossary = ln.startswith("Glossary")
            docs.append((ln, [ln]))
            continue
        m = re.match(r"^   :(.+?):", ln)
        if in_glossary and m:
            initial = m.group(1)[0].upper() if m.group(1)[0].isalpha() else "#"
            if docs[-1][0] != f"glossary {initial}":
                docs.append((f"glossary {initial}", []))
            in_glossary = True
        docs[-1][1].append(ln)
    out = []
    for key, body in docs:
        if key == "Glossary":
            continue  # the list of entry names
        paras = re.split(r"\n\s*\n", "\n".join(body))
        out.append("\n\n".join(_WS.sub(" ", p).strip() for p in paras if p.strip()))
    return out


# ----------------------------------------------------------------------------- man (roff) → text
_ROFF_CHARS = {
    "em": "\u2014", "en": "\u2013", "hy": "-", "aq": "'", "dq": '"', "lq": "\u201c", "rq": "\u201d",
    "oq": "\u2018", "cq": "\u2019", "bu": "\u2022", "co": "\u00a9", "rg": "\u00ae", "tm": "\u2122",
    "mu": "\u00d7", "di": "\u00f7", "+-": "\u00b1", "<=": "\u2264", ">=": "\u2265", "!=": "\u2260",
    "->": "\u2192", "<-": "\u2190", "de": "\u00b0", "ti": "~", "ha": "^", "rs": "\\", "sl": "/",
    "ga": "`", "aa": "\u00b4", "ul": "_", "bv": "|", "or": "|", "sq": "\u25a1", "pl": "+", "mi": "-",
    "eq": "=", "**": "*", "fo": "\u00ab", "fc": "\u00bb", "Fo": "\u00ab", "Fc": "\u00bb",
    "char92": "\\", "char46": ".", "char39": "'", "ss": "\u00df", "space": " ",
}
_ROFF_STRINGS = {"lq": "\u201c", "rq": "\u201d", "R": "\u00ae", "Tm": "\u2122"}
_ROFF_ESCAPE = re.compile(
    r"\\(?:f(?:\[[^\]]*\]|\(..|.)"           # font changes
    r"|s[-+]?(?:\d|\(\d\d|\[\d+\])"          # size changes
    r"|[nk](?:\[[^\]]*\]|\(..|.)"            # number registers
    r"|\*(?:\[[^\]]*\]|\(..|.)"              # strings
    r"|\((..)|\[([^\]]*)\]"                  # named characters
    r"|[hvwlLbxoDXZ](?:'[^']*'|\[[^\]]*\])"  # motions, widths, drawing
    r"|(.))", re.S)


def _roff_escape(m: re.Match) -> str:
    s = m.group(0)
    if s.startswith("\\*"):
        return _ROFF_STRINGS.get(s[2:].strip("[]").lstrip("("), "")
    name = m.group(1) or m.group(2)
    if name is not None:
        return _ROFF_CHARS.get(name, "")
    c = m.group(3)
    if c is None:
        return ""
    return {"-": "-", "e": "\\", "\\": "\\", "~": " ", " ": " ", "0": " ", "t": " ", ".": ".",
            "'": "'", "`": "`"}.get(c, "")


def _roff_args(s: str) -> list[str]:
    return [a[1:-1].replace('""', '"') if a.startswith('"') else a
            for a in re.findall(r'"(?:[^"]|"")*"?|\S+', s)]


def man_to_text(source: str) -> str:
    """Plain text of a man(7) page (the Linux man-pages conventions): headings and paragraphs
    kept, font changes dropped, .nf/.EX blocks verbatim up to MAX_PRE_LINES lines, tbl tables
    dropped. A page that is only a .so link gives ''."""
    out: list[str] = []          # finished blocks
    para: list[str] = []         # the filled paragraph being built
    verbatim: list[str] | None = None
    in_table = False
    tag_next = False             # .TP: the next line is the tag

    def flush() -> None:
        if para:
            text = _WS.sub(" ", " ".join(para)).strip()
            if text:
                out.append(text)
            para.clear()

    def text(s: str) -> str:
        s = re.sub(r'(?<!\\)\\".*', "", s)     # trailing comment
        return _ROFF_ESCAPE.sub(_roff_escape, s)

    lines = source.replace("\r\n", "\n").split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        while line.endswith("\\") and not line.endswith("\\\\") and i < len(lines):
            line = line[:-1] + lines[i]  # escaped newline continues the line
            i += 1
        if in_table:
            in_table = not line.startswith(".TE")
            continue
        if line.startswith((".\\\"", "'\\\"", '.\\"', "\\\"")) or line.strip() in (".", "'"):
            continue
        if line[:1] in (".", "'") and len(line) > 1:
            name, _, rest = line[1:].lstrip().partition(" ")
            args = _roff_args(rest)
            if name == "so":
                return ""
            if name in ("nf", "EX"):
                flush()
                if verbatim is None:
                    verbatim = []
            elif name in ("fi", "EE"):
                if verbatim is not None:
                    lines_ = [ln.rstrip() for ln in verbatim]
                    while lines_ and not lines_[-1]:
                        lines_.pop()
                    if lines_ and len(lines_) <= MAX_PRE_LINES and sum(map(len, lines_)) <= MAX_PRE_CHARS:
                        out.append("\n".join(lines_))
                    verbatim = None
            elif name == "TS":
                flush()
                in_table = True
            elif name in ("SH", "SS"):
                flush()
                if args:
                    out.append(text(" ".join(args)))
            elif name in ("PP", "LP", "P", "sp", "HP", "RS", "RE", "TP", "IP", "TQ"):
                if verbatim is None:
                    flush()
                if name == "TP" or name == "TQ":
                    tag_next = True
                elif name == "IP" and args and args[0]:
                    out.append(text(args[0]))
            elif name == "br":
                if verbatim is None:
                    flush()
            elif name in ("B", "I", "SM", "SB", "BR", "BI", "IB", "RB", "RI", "IR", "UR", "MT", "OP"):
                alternating = len(name) == 2 and name not in ("SM", "SB", "UR", "MT", "OP")  # .BR etc.
                s = text(("" if alternating else " ").join(args))
                if verbatim is not None:
                    verbatim.append(s)
                elif s:
                    para.append(s)
                    if tag_next:
                        flush()
                        tag_next = False
            continue  # .TH .ad .na .nh .hy .in .ti .ft .ne .PD .UE .ME .ds .de ... and unknown requests
        s = text(line)
        if verbatim is not None:
            verbatim.append(s.expandtabs(8))
        elif s.strip():
            para.append(s)
            if tag_next:
                flush()
                tag_next = False
        else:
            flush()
    flush()
    return "\n\n".join(out)

# ----------------------------------------------------------------------------- files → documents
def _read(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _charset_decode(data: bytes) -> str:
    m = re.search(rb"""charset=["']?([\w-]+)""", data[:4096], re.I)
    enc = m.group(1).decode("ascii").lower() if m else "utf-8"
    try:
        return data.decode(enc)
    except (LookupError, UnicodeDecodeError):
        return _decode(data)


def file_documents(task: tuple[Source, str, list[str]]) -> list[tuple[str, str, float]]:
    """(path, text, link fraction) of each document one file (or one Info manual) gives."""
    src, root, rels = task
    docs = _file_documents(src, root, rels)
    if src.drop_lines:
        drop = re.compile("|".join(f"(?:{d})" for d in src.drop_lines))
        docs = [(p, normalise("\n".join(ln for ln in t.split("\n") if not drop.fullmatch(ln))), links)
                for p, t, links in docs]
    return docs


def _file_documents(src: Source, root: str, rels: list[str]) -> list[tuple[str, str, float]]:
    paths = [Path(root, r) for r in rels]
    if src.kind == "html":
        text, links = html_to_text(_charset_decode(_read(paths[0])), src.main, src.skip)
        return [(rels[0], normalise(text), links)]
    if src.kind == "pod":
        return [(rels[0], normalise(pod_to_text(_decode(_read(paths[0])))), 0.0)]
    if src.kind == "text":
        text = _decode(_read(paths[0])).expandtabs(8)
        text = re.sub(r"\s+vim?:[^\n]*:$", "", text.rstrip())  # vim help files' modeline
        return [(rels[0], normalise(text), 0.0)]
    if src.kind == "man":
        return [(rels[0], normalise(man_to_text(_decode(_read(paths[0])))), 0.0)]
    if src.kind == "info":
        stream = "".join(_decode(_read(p)) for p in paths)
        return [(f"{rels[0]}#{i}", normalise(d), 0.0) for i, d in enumerate(info_documents(stream))]
    if src.kind == "jargon":
        return [(f"{rels[0]}#{i}", normalise(d), 0.0)
                for i, d in enumerate(jargon_documents(_decode(_read(paths[0]))))]
    raise ValueError(f"{src.package}: unknown kind {src.kind!r}")


def _natural(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def select_files(src: Source, root: Path) -> list[list[str]]:
    """The source's files under root (sorted paths); an Info manual's parts form one group."""
    rels = []
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            rel = os.path.relpath(os.path.join(dirpath, f), root)
            if (any(fnmatch.fnmatchcase(rel, p) for p in src.include)
                    and not any(fnmatch.fnmatchcase(rel, p) for p in src.exclude)
                    and os.path.isfile(os.path.join(dirpath, f))):
                rels.append(rel)
    rels.sort()
    if src.kind != "info":
        return [[r] for r in rels]
    manuals: dict[str, list[str]] = {}
    for r in rels:  # foo.info.gz, foo.info-1.gz, ... → one manual, parts in numeric order
        manuals.setdefault(re.sub(r"\.info(-\d+)?(\.gz)?$", "", r), []).append(r)
    return [sorted(v, key=_natural) for _, v in sorted(manuals.items())]


# ----------------------------------------------------------------------------- apt
def run(cmd: Sequence[str], cwd: Path | None = None) -> str:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr.strip()}")
    return p.stdout


def deb_fields(deb: Path) -> tuple[str, str]:
    package, version = run(["dpkg-deb", "-f", str(deb), "Package", "Version"]).splitlines()
    return package.split(":", 1)[1].strip(), version.split(":", 1)[1].strip()


def fetch(sources: Sequence[Source], debs: Path, unpinned: bool) -> dict[str, Path]:
    """package → its .deb under debs, downloading those not there yet with apt-get download."""
    debs.mkdir(parents=True, exist_ok=True)
    have = {deb_fields(d): d for d in sorted(debs.glob("*.deb"))}
    wanted = {s.package: s.version for s in sources}
    missing = [p for p, v in wanted.items() if (p, v) not in have]
    if missing:
        specs = [f"{p}={wanted[p]}" for p in missing]
        try:
            run(["apt-get", "download", *specs], cwd=debs)
        except RuntimeError as e:
            if not unpinned:
                raise SystemExit(f"{e}\n\nA pinned version is no longer in the archive? Rerun with "
                                 "--unpinned to take the current one (its version goes in the "
                                 "manifest), or apt-get download the pinned .debs into "
                                 f"{debs} from snapshot.debian.org.") from None
            run(["apt-get", "download", *missing], cwd=debs)
        have = {deb_fields(d): d for d in sorted(debs.glob("*.deb"))}
    out = {}
    for p, v in wanted.items():
        if (p, v) in have:
            out[p] = have[(p, v)]
        elif unpinned and [d for (q, _), d in have.items() if q == p]:
            out[p] = max((d for (q, _), d in have.items() if q == p), key=lambda d: d.stat().st_mtime)
        else:
            raise SystemExit(f"{p}={v}: not downloaded")
    return out


def _wanted(src: Source, rel: str) -> bool:
    return (any(fnmatch.fnmatchcase(rel, p) for p in src.include)
            and not any(fnmatch.fnmatchcase(rel, p) for p in src.exclude))


def extract(src: Source, deb: Path, dest: Path) -> None:
    """The source's files of the .deb under dest (what `dpkg-deb -x` would give, restricted
    to the files the source reads: `dpkg-deb --fsys-tarfile` streamed through tarfile, so
    gigabytes of images and API pages are never written). Symbolic links among them are kept
    as links (their targets extracted too). A finished extraction leaves dest/.done naming the
    .deb and the patterns, so a rerun with the same ones skips it."""
    done = dest / ".done"
    stamp = json.dumps([deb.name, src.include, src.exclude])
    if done.exists() and done.read_text() == stamp:
        return
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)

    def member_path(name: str) -> str:
        return os.path.normpath(name.removeprefix("./")).lstrip("/")

    def unpack(targets: set[str] | None) -> dict[str, str]:
        """Write the wanted regular files (with targets: exactly those paths); return the
        wanted links as {path: target path}."""
        links: dict[str, str] = {}
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for m in tar:
                rel = member_path(m.name)
                wanted = rel in targets if targets is not None else _wanted(src, rel)
                if not wanted:
                    continue
                if m.issym() or m.islnk():
                    base = "" if m.islnk() else os.path.dirname(rel)
                    links[rel] = member_path(os.path.join(base, m.linkname)
                                             if not m.linkname.startswith("/") else m.linkname)
                elif m.isfile():
                    _write(dest / rel, tar.extractfile(m))
        if proc.wait():
            raise RuntimeError(f"dpkg-deb --fsys-tarfile {deb} failed ({proc.returncode})")
        return links

    links = unpack(None)
    for _ in range(8):  # link targets outside the patterns, and links to links
        missing = {t for t in links.values() if t not in links and not (dest / t).exists()}
        if not missing:
            break
        links.update(unpack(missing))
    for rel, target in sorted(links.items()):
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(dest / target, path.parent), path)
    done.write_text(stamp)


def _write(path: Path, f) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        shutil.copyfileobj(f, out, 1 << 20)


def compress_xz(src: Path, dst: Path, workers: int) -> None:
    """xz-compress src into dst as XZ_PARTS concatenated .xz streams (cut at line ends),
    compressed in parallel threads (liblzma releases the GIL). The number of parts is fixed,
    so the result does not depend on the number of workers; xz, xzcat and Python's
    lzma.open read concatenated streams as one file."""
    data = src.read_bytes()
    cuts = [0]
    for i in range(1, XZ_PARTS):
        nl = data.find(b"\n", len(data) * i // XZ_PARTS)
        cuts.append(len(data) if nl < 0 else nl + 1)
    cuts.append(len(data))
    parts = [data[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]
    with ThreadPoolExecutor(max(1, min(workers, len(parts)))) as pool:
        streams = list(pool.map(lambda part: lzma.compress(part, preset=XZ_PRESET), parts))
    tmp = dst.with_suffix(".xz.tmp")
    with open(tmp, "wb") as f:
        for stream in streams:
            f.write(stream)
    os.replace(tmp, dst)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- main
def build(args: argparse.Namespace) -> dict:
    sources = [s for s in SOURCES if not args.only or s.package in args.only]
    unknown = set(args.only or ()) - {s.package for s in SOURCES}
    if unknown:
        raise SystemExit(f"--only: not in SOURCES: {' '.join(sorted(unknown))}")
    out = Path(args.out)
    work = Path(args.work)
    target = out / "debian_docs.jsonl.xz"
    if target.exists() and not args.force:
        raise SystemExit(f"{target} exists (--force rebuilds it)")
    t0 = time.time()
    debs = fetch(sources, work / "debs", args.unpinned)
    packages = []
    for s in sources:
        extract(s, debs[s.package], work / "root" / s.package)
        package, version = deb_fields(debs[s.package])
        packages.append({"package": package, "version": version, "pinned": s.version,
                         "deb": debs[s.package].name, "deb_sha256": sha256_file(debs[s.package])})
    print(f"fetched and extracted {len(sources)} packages in {time.time() - t0:.0f}s", flush=True)

    tasks = [(s, str(work / "root" / s.package), group)
             for s in sources for group in select_files(s, work / "root" / s.package)]
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "debian_docs.jsonl.tmp"
    seen: set[bytes] = set()
    stats: dict[str, dict[str, int]] = {s.package: dict(files=0, documents=0, chars=0) for s in sources}
    dropped = dict(short=0, links=0, duplicate=0)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(args.workers) as pool, open(jsonl, "w", encoding="utf-8") as f:
        for (src, _, _), docs in zip(tasks, pool.imap(file_documents, tasks, chunksize=8)):
            stats[src.package]["files"] += 1
            for _, text, links in docs:
                if len(text) < MIN_CHARS:
                    dropped["short"] += 1
                elif links > MAX_LINK_FRACTION:
                    dropped["links"] += 1
                else:
                    key = hashlib.sha256(text.encode()).digest()
                    if key in seen:
                        dropped["duplicate"] += 1
                        continue
                    seen.add(key)
                    f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                    stats[src.package]["documents"] += 1
                    stats[src.package]["chars"] += len(text)
    print(f"extracted {sum(s['documents'] for s in stats.values())} documents in "
          f"{time.time() - t0:.0f}s; compressing", flush=True)
    jsonl_sha, jsonl_bytes = sha256_file(jsonl), jsonl.stat().st_size
    compress_xz(jsonl, target, args.workers)
    if args.keep_jsonl:
        os.replace(jsonl, out / "debian_docs.jsonl")
    else:
        jsonl.unlink()
    for p in packages:
        p.update(stats[p["package"]])
    manifest = {
        "corpus": "debian_docs",
        "built_by": "data/prepare_debian_docs.py",
        "distribution": "Debian 12 (bookworm), main",
        "file": target.name,
        "documents": sum(s["documents"] for s in stats.values()),
        "characters": sum(s["chars"] for s in stats.values()),
        "dropped": dropped,
        "jsonl_bytes": jsonl_bytes,
        "jsonl_sha256": jsonl_sha,
        "xz_bytes": target.stat().st_size,
        "xz_sha256": sha256_file(target),
        "settings": {"min_chars": MIN_CHARS, "max_pre_lines": MAX_PRE_LINES,
                     "max_pre_chars": MAX_PRE_CHARS, "max_link_fraction": MAX_LINK_FRACTION,
                     "xz_preset": "9e", "xz_streams": XZ_PARTS},
        "packages": packages,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {target} ({target.stat().st_size / 2**20:.1f} MiB; {manifest['documents']} documents, "
          f"{manifest['characters']:,} characters) in {time.time() - t0:.0f}s")
    return manifest


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/debian_docs")
    ap.add_argument("--work", default="/tmp/debian_docs_work",
                    help=".debs and the files taken from them (reused by a rerun)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--unpinned", action="store_true",
                    help="use apt's current version where a pinned one is gone from the archive")
    ap.add_argument("--only", nargs="+", metavar="PKG", help="only these packages (for testing)")
    ap.add_argument("--keep-jsonl", action="store_true", help="also keep the uncompressed .jsonl")
    ap.add_argument("--force", action="store_true", help="overwrite an existing corpus")
    build(ap.parse_args(argv))


if __name__ == "__main__":
    main()
