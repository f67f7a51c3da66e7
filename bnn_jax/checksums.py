"""A checkpoint folder's checksum manifest: sealing it, and finding what damaged it."""

import hashlib
import json
import os
import pathlib

MANIFEST = "bnn_jax_checksums.json"
MANIFEST_FORMAT = 1
_CHUNK = 4 << 20  # bytes hashed per read


def file_digests(folder) -> dict[str, dict]:
  """{path relative to folder: {"bytes": size, "sha256": hex}} of every file but the manifest."""
  folder = pathlib.Path(folder)
  out = {}
  for path in sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink()):
    rel = path.relative_to(folder).as_posix()
    if rel == MANIFEST:
      continue
    digest = hashlib.sha256()
    with path.open("rb") as f:
      while chunk := f.read(_CHUNK):
        digest.update(chunk)
    out[rel] = {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}
  return out


def seal(folder) -> None:
  """Writes folder/bnn_jax_checksums.json for the folder's files as they are now (atomically)."""
  folder = pathlib.Path(folder)
  manifest = {"format": MANIFEST_FORMAT, "algorithm": "sha256", "files": file_digests(folder)}
  tmp = folder / f".{MANIFEST}.tmp"
  with tmp.open("w") as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, folder / MANIFEST)  # a reader sees no manifest or the whole one
  _fsync_folder(folder)


def _fsync_folder(folder: pathlib.Path) -> None:
  try:
    fd = os.open(folder, os.O_RDONLY)
  except OSError:  # some filesystems cannot open folders; the rename is then as durable as it gets
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def damage(folder) -> str | None:
  """None if `folder` matches its manifest, else what is wrong, as a phrase for a sentence."""
  folder = pathlib.Path(folder)
  try:
    manifest = json.loads((folder / MANIFEST).read_text())
    expected = manifest["files"]
    if manifest.get("algorithm") != "sha256" or not isinstance(expected, dict):
      return f"its {MANIFEST} is not one this bnn_jax wrote"
  except FileNotFoundError:
    return (
      f"it has no {MANIFEST}: its save did not finish (or an older bnn_jax wrote it), so it "
      f"is not trusted"
    )
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    return f"its {MANIFEST} is unreadable ({type(e).__name__})"
  try:
    present = {
      p.relative_to(folder).as_posix(): p
      for p in folder.rglob("*")
      if (p.is_file() or p.is_symlink()) and p.name != MANIFEST
    }
    for rel in sorted(expected):
      if rel not in present:
        return f"its file {rel} is missing"
      size = present[rel].stat().st_size
      if size != expected[rel]["bytes"]:
        return f"its file {rel} has {size} bytes, not {expected[rel]['bytes']}"
    extra = sorted(set(present) - set(expected))
    if extra:
      return f"its file {extra[0]} is not in its {MANIFEST}"
    actual = file_digests(folder)
  except OSError as e:
    return f"it cannot be read ({e.strerror or e})"
  for rel in sorted(expected):
    if actual[rel]["sha256"] != expected[rel]["sha256"]:
      return f"its file {rel} does not match its sha256 in {MANIFEST}"
  return None
