"""A disk cache of recorded graph inputs, so a second export does not rerun
the reference model over the calibration crops.

An entry is a directory named by a key that hashes everything the recorded
inputs depend on (model weights and config, image list, crop count, seed,
crop size, the graph split's version): one `.npz` per crop holding
"graph/input" arrays, and `meta.json`, written last, which marks the entry
complete. A half-written entry (an export killed mid-way) has no meta.json
and is recollected.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

CACHE_FORMAT = 1
# {graph name: {input name: array}} for one crop
Record = dict[str, dict[str, np.ndarray]]


def cache_key(**parts) -> str:
    """A short stable hash of JSON-serialisable parts."""
    text = json.dumps({"cache_format": CACHE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def default_cache_dir() -> Path:
    import os

    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dcae-deploy" / "calibration"


class RecordCache:
    """Recorded inputs of named splits ("calibration", "heldout") under one key."""

    def __init__(self, cache_dir: str | Path, key: str):
        self.root = Path(cache_dir)
        self.key = key
        self.path = self.root / key

    def _meta(self) -> dict | None:
        try:
            return json.loads((self.path / "meta.json").read_text())
        except (OSError, ValueError):
            return None

    def info(self) -> dict:
        """The `info` saved with the entry ({} on a miss)."""
        return (self._meta() or {}).get("info", {})

    def load(self, split: str, graphs: list[str] | None = None) -> list[Record] | None:
        """The records of `split` (only `graphs`, when given), or None on a miss."""
        meta = self._meta()
        if meta is None or split not in meta.get("splits", {}):
            return None
        records = []
        try:
            for k in range(meta["splits"][split]):
                with np.load(self.path / f"{split}_{k:04d}.npz", allow_pickle=False) as npz:
                    record: Record = {}
                    for name in npz.files:
                        graph, tensor = name.split("/", 1)
                        if graphs is None or graph in graphs:
                            record.setdefault(graph, {})[tensor] = npz[name]
                    records.append(record)
        except (OSError, ValueError, KeyError):
            return None  # damaged entry: treat as a miss, it will be rewritten
        return records

    def save(self, splits: dict[str, list[Record]], info: dict | None = None) -> None:
        """Write all splits of this key at once (replacing any old entry)."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.key}.", dir=self.root))
        try:
            for split, records in splits.items():
                for k, record in enumerate(records):
                    arrays = {f"{g}/{t}": a for g, tensors in record.items() for t, a in tensors.items()}
                    with open(staging / f"{split}_{k:04d}.npz", "wb") as f:
                        np.savez(f, **arrays)
            meta = {"key": self.key, "splits": {s: len(r) for s, r in splits.items()}, "info": info or {}}
            (staging / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
            if self.path.exists():
                shutil.rmtree(self.path)
            staging.rename(self.path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
