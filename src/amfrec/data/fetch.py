"""Obtain MovieLens-100K as RecBole atomic files (`ml-100k.inter`, `ml-100k.item`), cached.

Sources, in order:
1. the GroupLens zip (`u.data`, `u.item`), converted to RecBole's atomic format;
2. the `recbole==1.2.1` wheel from the Python package index, read as a zip (recbole is not installed):
   its URL from the index's simple API (PEP 691 JSON or PEP 503 HTML), then `pip download` as a fallback
   (which honours the user's pip configuration, e.g. a mirror).
The pure functions `convert_grouplens_zip` and `extract_from_wheel` do the reading; only `fetch_ml100k`
touches the network.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from amfrec.data.atomic import read_atomic
from amfrec.data.card import CARD_FILE, DatasetCard, write_card
from amfrec.errors import AmfrecError
from amfrec.io import atomic_dir, file_sha256, write_json

log = logging.getLogger(__name__)

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
RECBOLE_VERSION = "1.2.1"
RECBOLE_WHEEL = f"recbole-{RECBOLE_VERSION}-py3-none-any.whl"
PYPI_SIMPLE_URL = "https://pypi.org/simple/recbole/"
WHEEL_DIR = "recbole/dataset_example/ml-100k"
FILES = ("ml-100k.inter", "ml-100k.item")
GENRES = (  # u.genre, in flag order
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
ITEM_HEADER = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/amfrec/ml-100k` (default `~/.cache/amfrec/ml-100k`)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "amfrec" / "ml-100k"


# ---- pure readers ------------------------------------------------------------------------------


ML100K_CARD = DatasetCard(noun="movie", noun_plural="movies")


def _check_atomic(out_dir: Path) -> None:
    read_atomic(out_dir / FILES[0], {"user_id": "token", "item_id": "token", "timestamp": "float"})
    read_atomic(out_dir / FILES[1], {"item_id": "token"})


def extract_from_wheel(wheel_path: str | Path, out_dir: str | Path) -> Path:
    """Copy `recbole/dataset_example/ml-100k/ml-100k.{inter,item}` out of a recbole wheel into `out_dir`."""
    wheel_path, out_dir = Path(wheel_path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel_path) as zf:
            names = set(zf.namelist())
            for name in FILES:
                member = f"{WHEEL_DIR}/{name}"
                if member not in names:
                    raise AmfrecError(f"{wheel_path}: wheel has no member {member}")
                (out_dir / name).write_bytes(zf.read(member))
    except (zipfile.BadZipFile, FileNotFoundError) as e:
        raise AmfrecError(f"{wheel_path}: not a readable wheel/zip ({e})") from None
    _check_atomic(out_dir)
    return out_dir


def _member(zf: zipfile.ZipFile, zip_path: Path, base: str) -> str:
    hits = sorted(n for n in zf.namelist() if n == base or n.endswith("/" + base))
    if not hits:
        raise AmfrecError(f"{zip_path}: archive has no {base}")
    return hits[0]


def convert_grouplens_zip(zip_path: str | Path, out_dir: str | Path) -> Path:
    """Convert the GroupLens `ml-100k.zip` (`u.data`, `u.item`) into RecBole atomic files in `out_dir`.

    u.data: `user \\t item \\t rating \\t timestamp`. u.item (latin-1, '|'-separated): id, title "(year)",
    release date (dd-Mon-yyyy), video release date, IMDb URL, 19 genre flags. The title loses its trailing
    "(year)", release_year is the release date's year, class lists the flagged genres.
    """
    zip_path, out_dir = Path(zip_path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            data_name, item_name = _member(zf, zip_path, "u.data"), _member(zf, zip_path, "u.item")
            data_text = zf.read(data_name).decode("latin-1")
            item_text = zf.read(item_name).decode("latin-1")
    except (zipfile.BadZipFile, FileNotFoundError) as e:
        raise AmfrecError(f"{zip_path}: not a readable zip ({e})") from None

    inter_rows = [INTER_HEADER]
    for lineno, line in enumerate(data_text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4:
            raise AmfrecError(f"{zip_path}:{data_name}:{lineno}: expected 4 columns, found {len(parts)}")
        inter_rows.append("\t".join(parts))
    item_rows = [ITEM_HEADER]
    for lineno, line in enumerate(item_text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) != 5 + len(GENRES):
            raise AmfrecError(
                f"{zip_path}:{item_name}:{lineno}: expected {5 + len(GENRES)} '|'-separated columns, "
                f"found {len(parts)}"
            )
        item_id, title, date = parts[0], parts[1], parts[2]
        title = re.sub(r"\s*\(\d{4}\)\s*$", "", title).strip()
        year = date.strip()[-4:] if re.search(r"\d{4}$", date.strip()) else ""
        flags = parts[5:]
        genres = [g for g, f in zip(GENRES, flags, strict=True) if f.strip() == "1"]
        item_rows.append("\t".join([item_id, title.replace("\t", " "), year, " ".join(genres)]))
    (out_dir / FILES[0]).write_text("\n".join(inter_rows) + "\n", encoding="utf-8")
    (out_dir / FILES[1]).write_text("\n".join(item_rows) + "\n", encoding="utf-8")
    _check_atomic(out_dir)
    return out_dir


# ---- network -----------------------------------------------------------------------------------


def _download(url: str, dest: Path, timeout: float) -> str:
    """Download `url` to `dest`; return its sha256."""
    req = urllib.request.Request(url, headers={"User-Agent": "amfrec"})
    h = hashlib.sha256()
    with urllib.request.urlopen(req, timeout=timeout) as resp, dest.open("wb") as f:
        for block in iter(lambda: resp.read(1 << 16), b""):
            f.write(block)
            h.update(block)
    return h.hexdigest()


def _get_text(url: str, timeout: float, accept: str) -> tuple[str, str]:
    """GET `url`; return (content type, text)."""
    req = urllib.request.Request(url, headers={"User-Agent": "amfrec", "Accept": accept})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.headers.get("Content-Type", ""), resp.read().decode("utf-8")


def wheel_url_from_index(index_text: str, content_type: str) -> tuple[str, str | None]:
    """Find the recbole wheel's (url, sha256 or None) in a simple-index page (PEP 691 JSON / PEP 503 HTML)."""
    if "json" in content_type:
        for f in json.loads(index_text).get("files", []):
            if f.get("filename") == RECBOLE_WHEEL and f.get("url"):
                return f["url"], (f.get("hashes") or {}).get("sha256")
    else:
        for href in re.findall(r'href="([^"]+)"', index_text):
            url, _, frag = href.partition("#")
            if url.rsplit("/", 1)[-1] == RECBOLE_WHEEL:
                sha = frag[len("sha256=") :] if frag.startswith("sha256=") else None
                return url, sha
    raise ValueError(f"{RECBOLE_WHEEL} is not listed in the index")


def _wheel_from_index(tmp: Path, timeout: float) -> Path:
    ctype, text = _get_text(PYPI_SIMPLE_URL, timeout, "application/vnd.pypi.simple.v1+json, text/html;q=0.1")
    url, sha = wheel_url_from_index(text, ctype)
    url = urllib.parse.urljoin(PYPI_SIMPLE_URL, url)
    wheel = tmp / RECBOLE_WHEEL
    got = _download(url, wheel, timeout)
    if sha and got != sha:
        raise ValueError(f"{url}: sha256 {got} differs from the index's {sha}")
    return wheel


def _wheel_from_pip(tmp: Path, timeout: float) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--retries", "1",
           "--timeout", str(timeout), "-d", str(tmp), f"recbole=={RECBOLE_VERSION}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(60.0, 12 * timeout))
    wheel = tmp / RECBOLE_WHEEL
    if proc.returncode != 0 or not wheel.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"pip download failed (exit {proc.returncode}): {last}")
    return wheel


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".replace("\n", " ")


def fetch_ml100k(cache_dir: str | Path | None = None, timeout: float = 10.0) -> Path:
    """Return a directory with `ml-100k.inter` and `ml-100k.item` (RecBole atomic format).

    Uses the cache in `cache_dir` (default `default_cache_dir()`) when both files are there; otherwise tries
    the GroupLens zip, then the recbole wheel (index, then `pip download`), and writes the cache atomically
    with a `source.json` saying where the files came from and its dataset card (noun "movie"). Raises
    AmfrecError naming both sources when neither works.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if all((cache_dir / name).is_file() for name in FILES):
        if not (cache_dir / CARD_FILE).is_file():  # a cache from before cards
            write_card(cache_dir, ML100K_CARD)
        return cache_dir
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="amfrec-fetch-") as work:
        work = Path(work)
        attempts = [
            ("GroupLens zip " + GROUPLENS_URL, lambda: _grouplens(work, timeout)),
            (
                f"PyPI recbole=={RECBOLE_VERSION} wheel via {PYPI_SIMPLE_URL}",
                lambda: _recbole_index(work, timeout),
            ),
            (f"PyPI recbole=={RECBOLE_VERSION} wheel via pip download", lambda: _recbole_pip(work, timeout)),
        ]
        for name, attempt in attempts:
            log.info("obtaining ml-100k: trying %s", name)
            try:
                files_dir, source = attempt()
            except (OSError, ValueError, RuntimeError, subprocess.SubprocessError, AmfrecError) as e:
                # OSError covers URLError, time-outs and DNS failures
                log.info("ml-100k: %s failed: %s", name, _reason(e))
                failures.append(f"{name}: {_reason(e)}")
                continue
            with atomic_dir(cache_dir) as tmp:
                for f in FILES:
                    shutil.copyfile(files_dir / f, tmp / f)
                write_json(tmp / "source.json", source)
                write_card(tmp, ML100K_CARD)
            log.info("ml-100k from %s cached in %s", name, cache_dir)
            return cache_dir
    raise AmfrecError("could not obtain ml-100k (pass --data DIR with RecBole atomic files instead): " +
                      "; ".join(failures))  # fmt: skip


def _grouplens(work: Path, timeout: float) -> tuple[Path, dict]:
    archive = work / "ml-100k.zip"
    sha = _download(GROUPLENS_URL, archive, timeout)
    out = convert_grouplens_zip(archive, work / "grouplens")
    return out, {"source": "grouplens", "url": GROUPLENS_URL, "sha256": sha}


def _recbole_index(work: Path, timeout: float) -> tuple[Path, dict]:
    (work / "index").mkdir()
    return _from_wheel(_wheel_from_index(work / "index", timeout), work, "pypi-index")


def _recbole_pip(work: Path, timeout: float) -> tuple[Path, dict]:
    (work / "pip").mkdir()
    return _from_wheel(_wheel_from_pip(work / "pip", timeout), work, "pip-download")


def _from_wheel(wheel: Path, work: Path, how: str) -> tuple[Path, dict]:
    sha = file_sha256(wheel)
    out = extract_from_wheel(wheel, work / f"wheel-{how}")
    return out, {"source": f"recbole=={RECBOLE_VERSION} wheel ({how})", "file": RECBOLE_WHEEL, "sha256": sha}
