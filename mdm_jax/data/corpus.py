"""The embedded default corpus: English prose that ships with Python itself.

Documents are the `pydoc_data.topics` help topics plus the docstrings of a fixed list of
standard library modules, pure-Python and built-in (one document per module: its docstring
followed by the docstrings of the public classes, methods and functions defined in it). That is
about all the English prose an installed CPython contains: ~1.8 MB. Everything is read
from the running interpreter, so no network is needed and the text is identical for a given
Python minor version (the TFDS builder config is named after it).

Only `__doc__` attributes are used (no signatures or reprs, which could contain memory
addresses), members are visited in sorted order, and inherited docstrings are skipped, so the
corpus is deterministic.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import pydoc_data.topics
import sys
import warnings
import zlib
from collections.abc import Iterator

log = logging.getLogger(__name__)

# Pure-Python modules of every CPython >= 3.11 build with at least ~1 kB of docstrings (none
# deprecated for removal, none with side effects on import, no GUI/platform-specific ones).
STDLIB_MODULES = (
    "_collections_abc",
    "_compression",
    "_markupbase",
    "_pydecimal",
    "_pyio",
    "_sitebuiltins",
    "_strptime",
    "_threading_local",
    "_weakrefset",
    "abc",
    "argparse",
    "ast",
    "asyncio.base_events",
    "asyncio.events",
    "asyncio.locks",
    "asyncio.protocols",
    "asyncio.queues",
    "asyncio.runners",
    "asyncio.selector_events",
    "asyncio.staggered",
    "asyncio.streams",
    "asyncio.tasks",
    "asyncio.timeouts",
    "asyncio.transports",
    "base64",
    "bdb",
    "bz2",
    "calendar",
    "cmd",
    "code",
    "codecs",
    "codeop",
    "collections",
    "collections.abc",
    "compileall",
    "concurrent.futures.process",
    "concurrent.futures.thread",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "difflib",
    "dis",
    "email.base64mime",
    "email.charset",
    "email.errors",
    "email.feedparser",
    "email.generator",
    "email.header",
    "email.headerregistry",
    "email.message",
    "email.parser",
    "email.policy",
    "email.quoprimime",
    "email.utils",
    "enum",
    "filecmp",
    "fileinput",
    "fnmatch",
    "fractions",
    "ftplib",
    "functools",
    "genericpath",
    "getopt",
    "getpass",
    "graphlib",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "http",
    "http.client",
    "http.cookiejar",
    "http.cookies",
    "http.server",
    "imaplib",
    "inspect",
    "io",
    "ipaddress",
    "json",
    "json.decoder",
    "json.encoder",
    "linecache",
    "locale",
    "logging",
    "logging.config",
    "logging.handlers",
    "lzma",
    "mailbox",
    "mimetypes",
    "multiprocessing.connection",
    "multiprocessing.context",
    "multiprocessing.managers",
    "multiprocessing.reduction",
    "ntpath",
    "numbers",
    "operator",
    "optparse",
    "os",
    "pathlib",
    "pdb",
    "pickle",
    "pickletools",
    "pkgutil",
    "platform",
    "plistlib",
    "poplib",
    "posixpath",
    "pprint",
    "profile",
    "pstats",
    "py_compile",
    "pyclbr",
    "pydoc",
    "queue",
    "quopri",
    "random",
    "re",
    "runpy",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shutil",
    "signal",
    "site",
    "smtplib",
    "socket",
    "socketserver",
    "ssl",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "symtable",
    "sysconfig",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "trace",
    "traceback",
    "tracemalloc",
    "types",
    "typing",
    "urllib.parse",
    "urllib.request",
    "urllib.robotparser",
    "warnings",
    "wave",
    "weakref",
    "webbrowser",
    "wsgiref.handlers",
    "wsgiref.headers",
    "wsgiref.util",
    "wsgiref.validate",
    "xml.dom.domreg",
    "xml.dom.expatbuilder",
    "xml.dom.minidom",
    "xml.etree.ElementTree",
    "xml.sax.handler",
    "xml.sax.saxutils",
    "xml.sax.xmlreader",
    "xmlrpc.client",
    "xmlrpc.server",
    "zipapp",
    "zipfile",
    "zipimport",
)

# Extension modules with hand-written docstrings (the builtins, str/list/dict methods, os's
# functions, io classes, ...); present in every CPython build on Linux/macOS.
BUILTIN_MODULES = (
    "builtins",
    "math",
    "cmath",
    "itertools",
    "sys",
    "time",
    "gc",
    "posix",
    "_io",
    "array",
    "binascii",
    "zlib",
    "select",
    "_socket",
    "_operator",
    "_collections",
    "_pickle",
    "_datetime",
    "_heapq",
    "_struct",
    "unicodedata",
    "_csv",
    "_thread",
    "_signal",
    "_decimal",
    "_codecs",
    "_hashlib",
    "marshal",
    "fcntl",
    "termios",
    "mmap",
    "_lzma",
    "_bz2",
    "_contextvars",
    "_stat",
)

VALIDATION_FRACTION = 0.05


def python_tag() -> str:
    """The interpreter version the corpus text comes from, e.g. 'py3.11'."""
    return f"py{sys.version_info.major}.{sys.version_info.minor}"


def validation_names(docs: list[tuple[str, str]]) -> set[str]:
    """The fixed validation split: documents taken in the order of a stable hash (crc32) of their
    names until they hold >= 5% of the bytes. Targeting bytes, not a count, keeps the
    validation set ~5% of the text on every Python version, however the document sizes fall."""
    total = sum(len(t.encode("utf-8")) for _, t in docs)
    names, acc = set(), 0
    for name, text in sorted(docs, key=lambda d: (zlib.crc32(d[0].encode("utf-8")), d[0])):
        if acc >= VALIDATION_FRACTION * total:
            break
        names.add(name)
        acc += len(text.encode("utf-8"))
    return names


def _own_doc(obj) -> str:
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) and doc.strip() else ""


def _is_routine(obj) -> bool:
    return inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.ismethoddescriptor(obj)


def _module_text(modname: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = importlib.import_module(modname)
    parts = []
    if doc := _own_doc(mod):
        parts.append(doc)
    for name in sorted(vars(mod)):
        obj = vars(mod)[name]
        if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
            continue
        if isinstance(obj, type):
            if doc := _own_doc(obj):
                parts.append(f"class {name}\n\n{doc}")
            for mname in sorted(vars(obj)):
                member = vars(obj)[mname]
                if mname.startswith("_") and mname != "__init__":
                    continue
                member = getattr(member, "__func__", member)  # classmethod/staticmethod
                if _is_routine(member) and (doc := _own_doc(member)):
                    parts.append(f"{name}.{mname}\n\n{doc}")
        elif _is_routine(obj) and (doc := _own_doc(obj)):
            parts.append(f"{name}\n\n{doc}")
    return "\n\n".join(parts)


def documents() -> Iterator[tuple[str, str]]:
    """Yields (name, text) for every document in a fixed order; skips modules that fail to import."""
    for name in sorted(pydoc_data.topics.topics):
        text = pydoc_data.topics.topics[name].strip()
        if text:
            yield f"topic:{name}", text
    for modname in STDLIB_MODULES + BUILTIN_MODULES:
        try:
            text = _module_text(modname)
        except Exception as e:  # e.g. a Python built without ssl/sqlite3
            log.warning("embedded corpus: skipping module %s (%s)", modname, e)
            continue
        if text:
            yield f"module:{modname}", text
