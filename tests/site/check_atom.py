"""Checks an Atom feed built by `verdicts site build`.

Usage: check_atom.py FEED EXPECTED_ENTRIES

The feed must parse cleanly with feedparser (an independent parser) and follow RFC 4287:
the feed and each entry have an id (an absolute IRI, unique per entry), a title and an
updated date-time; the feed has an author and a rel="self" link; each entry has a
rel="alternate" link and content. Prints every problem and exits 1 if there is one.
"""
import re
import sys
import xml.etree.ElementTree as ET

import feedparser

ATOM = "{http://www.w3.org/2005/Atom}"
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
ABSOLUTE = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)

path, expected = sys.argv[1], int(sys.argv[2])
problems = []

parsed = feedparser.parse(path)
if parsed.bozo:
    problems.append(f"feedparser: {parsed.bozo_exception}")
if parsed.version != "atom10":
    problems.append(f"feedparser reads it as {parsed.version!r}, not Atom 1.0")
if len(parsed.entries) != expected:
    problems.append(f"{len(parsed.entries)} entries, expected {expected}")
for e in parsed.entries:
    if not e.get("content") or not e.content[0].value.strip():
        problems.append(f"entry {e.get('id')}: no content")

root = ET.parse(path).getroot()
if root.tag != ATOM + "feed":
    problems.append(f"root element is {root.tag}")


def check_common(el, where):
    for name in ("id", "title", "updated"):
        found = el.findall(ATOM + name)
        if len(found) != 1:
            problems.append(f"{where}: {len(found)} <{name}> elements, need exactly one")
    ident = el.findtext(ATOM + "id") or ""
    if not ABSOLUTE.match(ident):
        problems.append(f"{where}: id {ident!r} is not an absolute IRI")
    for name in ("updated", "published"):
        value = el.findtext(ATOM + name)
        if value is not None and not RFC3339.match(value):
            problems.append(f"{where}: {name} {value!r} is not an RFC 3339 date-time")
    for link in el.findall(ATOM + "link"):
        if not ABSOLUTE.match(link.get("href", "")):
            problems.append(f"{where}: link href {link.get('href')!r} is not absolute")


check_common(root, "feed")
links = {l.get("rel", "alternate"): l.get("href") for l in root.findall(ATOM + "link")}
if "self" not in links:
    problems.append("feed: no rel=self link")
elif not path.replace("\\", "/").endswith(links["self"].split("/", 3)[-1]):
    problems.append(f"feed: self link {links['self']} does not name this file")
if "alternate" not in links:
    problems.append("feed: no rel=alternate link")
feed_has_author = root.find(ATOM + "author/" + ATOM + "name") is not None

ids = set()
for i, entry in enumerate(root.findall(ATOM + "entry")):
    where = f"entry {i + 1}"
    check_common(entry, where)
    ident = entry.findtext(ATOM + "id")
    if ident in ids:
        problems.append(f"{where}: id {ident} is used twice")
    ids.add(ident)
    alternates = [l for l in entry.findall(ATOM + "link") if l.get("rel", "alternate") == "alternate"]
    if len(alternates) != 1:
        problems.append(f"{where}: {len(alternates)} alternate links")
    if not feed_has_author and entry.find(ATOM + "author") is None:
        problems.append(f"{where}: no author, and the feed has none")
    content = entry.find(ATOM + "content")
    if content is None and not alternates:
        problems.append(f"{where}: neither content nor an alternate link")

for p in problems:
    print(p)
sys.exit(1 if problems else 0)
