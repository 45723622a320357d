"""Files: atomic writes (nothing is ever half-written: a temporary path, then a rename), file hashes, and
the `KEY=VALUE` overrides of the command line."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside `out`; on success it replaces `out`, on error it is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a data folder is as readable as any other
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside `path` (same suffix) to write; on success it replaces `path`, on
    error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (streamed)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def parse_overrides(pairs: Iterable[str], flag: str = "--set") -> dict[str, Any]:
    """`["train.max_steps=8", "model.noun=book"]` -> {"train.max_steps": 8, "model.noun": "book"}: values
    parsed as YAML. Raises AmfrecError naming the pair."""
    import yaml

    from amfrec.errors import AmfrecError

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = str(pair).partition("=")
        if not sep or not key.strip():
            raise AmfrecError(f"{flag} expects KEY=VALUE (e.g. train.lr=1e-4), got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise AmfrecError(f"{flag} {pair}: the value is not valid YAML") from None
    return out


def write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically (temporary file beside it, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON, atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Write one compact JSON object per line, atomically."""
    write_text(path, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))


def read_text(path: str | Path) -> str:
    """A UTF-8 text file's contents; a missing file or non-UTF-8 bytes raise AmfrecError naming it."""
    from amfrec.errors import AmfrecError

    path = Path(path)
    if not path.is_file():
        raise AmfrecError(f"{path}: file not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise AmfrecError(f"{path}:{line}: not UTF-8 text (byte {e.start})") from None


def read_json(path: str | Path) -> Any:
    """Read a JSON file; a missing or malformed file raises AmfrecError naming it."""
    from amfrec.errors import AmfrecError

    path = Path(path)
    if not path.is_file():
        raise AmfrecError(f"{path}: file not found")
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise AmfrecError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None


def read_jsonl(path: str | Path, fields: tuple[str, ...] = ()) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON Lines file; a missing file, non-UTF-8 bytes, a
    malformed line, a line that is not a JSON object or one without a key of `fields` raises AmfrecError
    naming the file and line."""
    from amfrec.errors import AmfrecError

    path = Path(path)
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise AmfrecError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise AmfrecError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        for field in fields:
            if field not in row:
                raise AmfrecError(f"{path}:{lineno}: missing field '{field}'")
        yield lineno, row


def read_yaml_mapping(path: str | Path) -> dict:
    """Read a YAML file whose top level is a mapping (an empty file gives {}).

    A missing file, malformed YAML (with its line) or another top level raises AmfrecError naming the file.
    """
    import yaml

    from amfrec.errors import AmfrecError

    path = Path(path)
    if not path.is_file():
        raise AmfrecError(f"{path}: file not found")
    try:
        raw = yaml.safe_load(read_text(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise AmfrecError(f"{path}{line}: malformed YAML ({getattr(e, 'problem', None) or e})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise AmfrecError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw
