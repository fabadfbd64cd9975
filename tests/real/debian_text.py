"""Real English and French text for the real tier: Debian's LibreOffice help (MPL-2.0, file-aligned translations).

    python -m tests.real.debian_text CACHE        # what `make test-real` / `make demo-real` run first

Fetches `libreoffice-help-en-us` and `libreoffice-help-fr` with `apt-get download` (installing them would pull
hundreds of packages), unpacks them with `dpkg -x` into `CACHE/deb/`, and writes one document per help page
(its heading and paragraphs, hidden platform variants dropped) to `CACHE/en.jsonl` and `CACHE/fr.jsonl`, the
files `unbackdoor corpus --corpus en=... --corpus fr=...` reads. A long page is cut at line boundaries into
documents of at most about `MAX_CHARS` characters: an evaluation prompt is the text before a trigger inside one
document, and a 10 000-character page would make prompts of thousands of tokens. Nothing is fetched again once
the JSONL files exist. Pages shorter than `MIN_CHARS` and French pages that are mostly English (untranslated
strings) are left out; how many of each is printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

PACKAGES = {"en": ("libreoffice-help-en-us", "en-US"), "fr": ("libreoffice-help-fr", "fr")}
MIN_CHARS = 200  # a help page (or the last piece of one) shorter than this is a stub (a title and a link)
MAX_CHARS = 800  # documents are pieces of a page of at most about this many characters, cut between lines
BLOCKS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "td"}
# a French page whose words are mostly these is an untranslated English page
ENGLISH_WORDS = frozenset("the and of to is you can for this with that are in on be or by as from".split())


class _HelpPage(HTMLParser):
    """The text of a help page's display area: one line per block, hidden spans (other platforms) left out."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth = 0  # inside <div id="DisplayArea"> when > 0 (counts nested divs)
        self.hidden = 0  # inside a hidden element when > 0
        self.stack: list[bool] = []  # per open tag inside the display area: was it hidden?
        self.blocks: list[str] = []
        self.current: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if self.depth == 0:
            if tag == "div" and a.get("id") == "DisplayArea":
                self.depth = 1
            return
        if tag == "div":
            self.depth += 1
        if tag in ("br", "img", "meta", "link", "input"):
            return
        hidden = "hidden" in a or tag in ("script", "style")
        self.stack.append(hidden)
        self.hidden += hidden
        if tag in BLOCKS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if self.depth == 0:
            return
        if tag in BLOCKS:
            self._flush()
        if tag == "div":
            self.depth -= 1
        if self.stack and tag not in ("br", "img", "meta", "link", "input"):
            self.hidden -= self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.depth and not self.hidden:
            self.current.append(data)

    def _flush(self) -> None:
        text = " ".join("".join(self.current).split())
        if text:
            self.blocks.append(text)
        self.current = []

    def text(self) -> str:
        self._flush()
        return "\n".join(self.blocks)


def page_text(html: str) -> str:
    parser = _HelpPage()
    parser.feed(html)
    return parser.text()


def english_share(text: str) -> float:
    words = [w.lower().strip(".,;:()\"'") for w in text.split()]
    return sum(w in ENGLISH_WORDS for w in words) / max(1, len(words))


def pieces(text: str, limit: int = MAX_CHARS) -> list[str]:
    """`text` cut between lines into pieces of at most `limit` characters (a longer single line is one piece)."""
    out: list[str] = []
    current: list[str] = []
    for line in text.split("\n"):
        if current and sum(len(x) + 1 for x in current) + len(line) > limit:
            out.append("\n".join(current))
            current = []
        current.append(line)
    if current:
        out.append("\n".join(current))
    return out


def pages(root: Path, lang: str) -> Iterator[dict[str, str]]:
    """Every help page of one language under `root` (the unpacked `.../help/<code>`), sorted by path."""
    for path in sorted(root.rglob("*.html")):
        text = page_text(path.read_text(encoding="utf-8", errors="replace"))
        yield {"text": text, "path": str(path.relative_to(root)), "lang": lang}


def fetch(cache: Path) -> dict[str, Path]:
    """Download, unpack and extract both languages into `cache` (idempotent); return the JSONL path per language."""
    cache.mkdir(parents=True, exist_ok=True)
    outs = {lang: cache / f"{lang}.jsonl" for lang in PACKAGES}
    if all(p.is_file() for p in outs.values()):
        return outs
    deb = cache / "deb"
    deb.mkdir(exist_ok=True)
    for package, _ in PACKAGES.values():
        if not list(deb.glob(f"{package}_*.deb")):
            subprocess.run(["apt-get", "download", package], cwd=deb, check=True, capture_output=True)
    unpacked = deb / "x"
    for file in sorted(deb.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(file), str(unpacked)], check=True)
    for lang, (_, code) in PACKAGES.items():
        kept = short = english = 0
        tmp = outs[lang].with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for page in pages(unpacked / "usr/share/libreoffice/help" / code, lang):
                if len(page["text"]) < MIN_CHARS:
                    short += 1
                elif lang != "en" and english_share(page["text"]) > 0.08:
                    english += 1
                else:
                    kept += 1
                    for n, piece in enumerate(p for p in pieces(page["text"]) if len(p) >= MIN_CHARS):
                        f.write(json.dumps({**page, "text": piece, "piece": n}, ensure_ascii=False) + "\n")
        os.replace(tmp, outs[lang])
        print(f"{lang}: {kept} help pages kept, {short} shorter than {MIN_CHARS} characters, {english} mostly English",
              file=sys.stderr)  # fmt: skip
    return outs


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.real.debian_text CACHE_DIR")
    for lang, path in fetch(Path(sys.argv[1])).items():
        print(f"{lang}={path}")
