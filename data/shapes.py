"""Shape datasets for training, fine-tuning and evaluation, from whatever 3D data is on disk.

``open_shapes(path, split="train")`` looks at the folder and reads any of:

- a folder with one sub-folder per category holding meshes or point clouds in any format open3d
  reads (``.ply .obj .off .stl .gltf .glb .pcd .xyz .pts``) or ``.npy``, searched recursively;
  optionally split already (``<category>/{train,val,test}/...``);
- ShapeNetCore.v2.PC15k (``<synset>/{train,val,test}/*.npy``) and the procedural set
  ``gen data shapes`` writes (same layout with category names);
- ShapeNetCore.v2 meshes (``<synset>/<id>/models/model_normalized.obj``);
- ModelNet40 (``<class>/{train,test}/*.off``, malformed ``OFF`` headers included).

Folder names that are ShapeNet synset ids become category names (``03001627`` -> ``chair``).
A folder without split sub-folders is split by a seeded shuffle (80/10/10 by default); one
with ``train`` and ``test`` but no ``val`` (ModelNet40) gives ``val`` a seeded tenth of
``train``, which ``train`` then leaves out.

Every shape is loaded once, as float32 points in memory (meshes are sampled on their surface,
``surface_points`` points each), and normalised as ``normalize`` names. Training items are fresh
random subsets of ``points_per_shape`` points each epoch (seeded by ``(seed, epoch, index)``);
``val`` and ``test`` items are one fixed subset per shape.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from flowsuite.core.errors import FlowsuiteError
from flowsuite.data.readers import SHAPE_EXTS, BadShapeFile, read_shape
from flowsuite.data.synsets import NAME_TO_SYNSET, category_name

SPLITS = ("train", "val", "test")
NORMALIZATIONS = ("unit_box", "unit_sphere", "global", "none")
_NORMALIZATION_DOC = {
    "unit_box": "per shape: bounding box centred at the origin, longest side scaled to 2 "
                "(inside [-1, 1]^3)",
    "unit_sphere": "per shape: centroid at the origin, farthest point at distance 1",
    "global": "one mean (3,) and one std (scalar, of all centred coordinates) over every point "
              "of the training split, as PointFlow does",
    "none": "coordinates as stored",
}


class ShapeFileWarning(UserWarning):
    """A shape file was skipped (empty, corrupt, degenerate or non-finite)."""


def _shape_rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *keys])


def _stable_key(text: str) -> int:
    import zlib

    return zlib.crc32(text.encode())


class ShapeDataset(Dataset):
    """Point clouds of shapes in categories; items are
    ``{"points": (points_per_shape, 3) float32 tensor, "category": int, "index": int}``.

    Attributes: ``categories`` (names, index order), ``split``, ``format`` (the layout found),
    ``normalization`` (its name), ``normalization_doc``, ``stats`` (``{"mean": [3], "std": s}``
    for ``global``), ``skipped`` (``[(path, reason)]``), ``root``.
    """

    def __init__(self, clouds: list[np.ndarray], labels: list[int], paths: list[Path],
                 categories: list[str], split: str, normalize: str = "unit_sphere",
                 points_per_shape: int | None = 2048, seed: int = 0,
                 stats: dict | None = None, fmt: str = "arrays", root: Path | None = None,
                 skipped: list[tuple[Path, str]] | None = None,
                 fresh_subsets: bool | None = None):
        if normalize not in NORMALIZATIONS:
            raise FlowsuiteError(f"unknown normalization {normalize!r}; choose from "
                                 f"{', '.join(NORMALIZATIONS)}")
        if split not in SPLITS:
            raise FlowsuiteError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        self.categories = list(categories)
        self.split = split
        self.format = fmt
        self.root = root
        self.normalization = normalize
        self.normalization_doc = _NORMALIZATION_DOC[normalize]
        self.points_per_shape = points_per_shape
        self.seed = int(seed)
        self.epoch = 0
        self.skipped = list(skipped or [])
        self.fresh_subsets = split == "train" if fresh_subsets is None else fresh_subsets
        self._labels = np.asarray(labels, np.int64)
        self._paths = list(paths)
        n = len(clouds)
        self.shift = np.zeros((n, 3), np.float32)
        self.scale = np.ones(n, np.float32)
        self.stats = None
        if normalize == "global":
            if stats is None:
                stats = global_stats(clouds)
            self.stats = {"mean": [float(x) for x in stats["mean"]], "std": float(stats["std"])}
            self.shift[:] = np.asarray(self.stats["mean"], np.float32)
            self.scale[:] = self.stats["std"]
        for i, c in enumerate(clouds):
            if normalize == "unit_box":
                lo, hi = c.min(0), c.max(0)
                self.shift[i] = (lo + hi) / 2
                self.scale[i] = (hi - lo).max() / 2
            elif normalize == "unit_sphere":
                self.shift[i] = c.mean(0)
                self.scale[i] = np.linalg.norm(c - self.shift[i], axis=1).max()
        self._clouds = [((c - self.shift[i]) / self.scale[i]).astype(np.float32)
                        for i, c in enumerate(clouds)]
        self._fixed: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._clouds)

    def set_epoch(self, epoch: int) -> None:
        """Chooses the training subsets of this epoch (call before iterating; DataLoader
        workers copy the dataset when an epoch's iterator starts)."""
        self.epoch = int(epoch)

    def category_of(self, i: int) -> str:
        """The category name of item ``i``."""
        return self.categories[int(self._labels[i])]

    def path_of(self, i: int) -> Path:
        """The file item ``i`` was read from."""
        return self._paths[i]

    def cloud(self, i: int) -> np.ndarray:
        """All stored points of shape ``i``, normalised: ``(n, 3)`` float32."""
        return self._clouds[i]

    def denormalize(self, points: np.ndarray | torch.Tensor, i: int):
        """Maps normalised points ``(..., 3)`` of shape ``i`` back to file coordinates."""
        return points * float(self.scale[i]) + (
            torch.as_tensor(self.shift[i]) if isinstance(points, torch.Tensor) else
            self.shift[i])

    def _subset(self, i: int) -> np.ndarray:
        c = self._clouds[i]
        k = self.points_per_shape
        if k is None or k == len(c):
            return c
        if not self.fresh_subsets:
            if i not in self._fixed:
                self._fixed[i] = _choose(_shape_rng(self.seed, 1, i), len(c), k)
            return c[self._fixed[i]]
        return c[_choose(_shape_rng(self.seed, 0, self.epoch, i), len(c), k)]

    def __getitem__(self, i: int) -> dict:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return {"points": torch.from_numpy(np.ascontiguousarray(self._subset(i))),
                "category": int(self._labels[i]), "index": int(i)}

    def __repr__(self) -> str:
        return (f"ShapeDataset({len(self)} shapes, split={self.split!r}, format={self.format!r}, "
                f"categories={self.categories}, normalization={self.normalization!r})")


def _choose(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    if k <= n:
        return np.sort(rng.permutation(n)[:k])
    return rng.integers(0, n, size=k)


def global_stats(clouds: Sequence[np.ndarray]) -> dict:
    """Mean ``(3,)`` of all points and the std of all their centred coordinates (accumulated
    shape by shape in float64, without stacking every point)."""
    n, s1, s2 = 0, np.zeros(3), 0.0
    for c in clouds:
        c = np.asarray(c, np.float64)
        n += len(c)
        s1 += c.sum(0)
        s2 += float(np.einsum("ij,ij->", c, c))
    mean = s1 / n
    var = max(s2 / n - float(mean @ mean), 0.0) / 3
    return {"mean": mean, "std": float(np.sqrt(var))}


# -------------------------------------------------------------------------- finding the files

def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _shape_files(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if not f.startswith(".") and Path(f).suffix.lower() in SHAPE_EXTS:
                out.append(Path(dirpath) / f)
    return sorted(out)


def _listdir(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if _visible(p))
    except PermissionError:
        raise FlowsuiteError(f"cannot read {folder}: permission denied") from None
    except OSError as e:
        raise FlowsuiteError(f"cannot read {folder}: {e.strerror or e}") from None


def scan_shapes(root: str | os.PathLike, seed: int = 0,
                split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
                ) -> tuple[str, dict[str, dict[str, list[Path]]]]:
    """Finds the shape files under ``root``: returns the layout's name and
    ``{category: {split: [files]}}``. Raises ``FlowsuiteError`` for a missing, unreadable or
    empty folder."""
    root = Path(root)
    if not root.exists():
        raise FlowsuiteError(f"{root} does not exist; give the folder that holds your shapes")
    if not root.is_dir():
        raise FlowsuiteError(f"{root} is a file; give the folder that holds your shapes "
                             "(one sub-folder per category)")
    entries = _listdir(root)
    subdirs = [p for p in entries if p.is_dir()]
    loose = [p for p in entries if p.is_file() and p.suffix.lower() in SHAPE_EXTS]
    groups: dict[str, Path | list[Path]] = {}
    if loose and not any(_shape_files(d) for d in subdirs):
        groups[root.name] = root  # a flat folder of shapes is one category
    else:
        for d in subdirs:
            groups[d.name] = d
    found: dict[str, dict[str, list[Path]]] = {}
    pre_split = 0
    synset_names = 0
    mesh_layout = 0
    off_files = 0
    npy_files = 0
    total = 0
    for folder_name, folder in groups.items():
        name = category_name(folder_name)
        synset_names += name != folder_name
        split_dirs = {s: folder / s for s in SPLITS if (folder / s).is_dir()}
        if folder is not root and ("train" in split_dirs or "test" in split_dirs):
            pre_split += 1
            per = {s: _shape_files(split_dirs[s]) if s in split_dirs else [] for s in SPLITS}
            if "val" not in split_dirs and per["train"]:
                per["train"], per["val"] = _carve(per["train"], split_ratios[1], seed, name)
        else:
            files = _shape_files(folder) if folder is not root else sorted(loose)
            per = _split_files(files, split_ratios, seed, name)
        n = sum(len(v) for v in per.values())
        if n == 0:
            continue
        total += n
        allf = [f for v in per.values() for f in v]
        mesh_layout += any(f.name == "model_normalized.obj" for f in allf[:5])
        off_files += sum(f.suffix.lower() == ".off" for f in allf)
        npy_files += sum(f.suffix.lower() == ".npy" for f in allf)
        if name in found:  # two folders with one name (a synset id and its name)
            for s in SPLITS:
                found[name][s] = sorted(found[name][s] + per[s])
        else:
            found[name] = per
    if total == 0:
        raise FlowsuiteError(f"{root} holds no shape files ({' '.join(sorted(SHAPE_EXTS))}); "
                             "put one sub-folder per category in it")
    if mesh_layout and synset_names:
        fmt = "shapenet-v2"
    elif pre_split and npy_files == total:
        fmt = "shapenet-pc15k" if synset_names else "pc15k-layout"
    elif pre_split and off_files == total:
        fmt = "modelnet"
    else:
        fmt = "folder"
    return fmt, dict(sorted(found.items()))


def _split_files(files: list[Path], ratios: tuple[float, float, float], seed: int,
                 name: str) -> dict[str, list[Path]]:
    from flowsuite.data.generate import split_counts

    total = sum(ratios)
    counts = split_counts(len(files), ratios[1] / total, ratios[2] / total)
    order = _shape_rng(seed, 2, _stable_key(name)).permutation(len(files))
    shuffled = [files[i] for i in order]
    a, b = counts["train"], counts["train"] + counts["val"]
    return {"train": sorted(shuffled[:a]), "val": sorted(shuffled[a:b]),
            "test": sorted(shuffled[b:])}


def _carve(files: list[Path], frac: float, seed: int, name: str
           ) -> tuple[list[Path], list[Path]]:
    n_val = int(round(len(files) * frac)) if len(files) >= 2 else 0
    if len(files) >= 10:
        n_val = max(n_val, 1)
    order = _shape_rng(seed, 3, _stable_key(name)).permutation(len(files))
    val = {files[i] for i in order[:n_val]}
    return [f for f in files if f not in val], sorted(val)


# ------------------------------------------------------------------------------------- loading

def _read_one(task: tuple[Path, int, int]) -> tuple[np.ndarray | None, str | None]:
    f, surface_points, key = task
    try:
        return read_shape(f, surface_points, _shape_rng(key >> 32, 4, key & 0xFFFFFFFF)), None
    except BadShapeFile as e:
        return None, str(e)
    except OSError as e:
        return None, f"unreadable: {e.strerror or e}"


def _load(files: list[Path], surface_points: int, seed: int, root: Path, progress: bool,
          desc: str, workers: int | None = None
          ) -> tuple[list[np.ndarray | None], list[tuple[Path, str]]]:
    from tqdm import tqdm

    from flowsuite.data.generate import _pool_context

    tasks = []
    for f in files:
        rel = f.relative_to(root).as_posix() if f.is_relative_to(root) else str(f)
        tasks.append((f, surface_points, ((int(seed) & 0xFFFFFFFF) << 32) | _stable_key(rel)))
    n_workers = max(1, min(workers or os.cpu_count() or 1, len(tasks) // 32))
    bar = tqdm(total=len(tasks), desc=desc, unit="file", disable=not progress)
    results = []
    if n_workers == 1:
        for t in tasks:
            results.append(_read_one(t))
            bar.update()
    else:  # each file's points depend only on (seed, its path): any worker count gives the same
        with _pool_context().Pool(n_workers) as pool:
            for r in pool.imap(_read_one, tasks, chunksize=16):
                results.append(r)
                bar.update()
    bar.close()
    clouds: list[np.ndarray | None] = []
    skipped: list[tuple[Path, str]] = []
    for f, (cloud, reason) in zip(files, results, strict=True):
        clouds.append(cloud)
        if reason is not None:
            skipped.append((f, reason))
            warnings.warn(f"skipped {f}: {reason}", ShapeFileWarning, stacklevel=3)
    return clouds, skipped


def _summary(skipped: list[tuple[Path, str]], n: int, root: Path, split: str) -> str:
    kinds = Counter(reason.split(":", 1)[0] for _, reason in skipped)
    detail = ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
    return f"skipped {len(skipped)} of {n} {split} files in {root} ({detail})"


_STATS_CACHE: dict[tuple, dict] = {}


def open_shapes(path: str | os.PathLike, split: str = "train",
                categories: Sequence[str] | None = None, normalize: str = "global",
                points_per_shape: int | None = 2048, surface_points: int = 15000,
                seed: int = 0, split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
                stats: dict | None = None, progress: bool = False,
                workers: int | None = None) -> ShapeDataset:
    """Opens the shapes under ``path`` (layout detected, see the module doc) as a
    :class:`ShapeDataset` of ``split``.

    ``categories``: names or ShapeNet synset ids to keep (default all). ``normalize``: one of
    ``unit_box``, ``unit_sphere``, ``global`` (statistics of the training split; pass ``stats``
    to reuse a model's), ``none``. ``points_per_shape``: points per item (``None``: all).
    ``surface_points``: points sampled on each mesh (and the cap for point-cloud files).
    ``workers``: processes reading files (default: the CPU count; small sets read in-process).
    Raises ``FlowsuiteError`` for a folder with nothing usable.
    """
    root = Path(path)
    if split not in SPLITS:
        raise FlowsuiteError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if normalize not in NORMALIZATIONS:
        raise FlowsuiteError(f"unknown normalization {normalize!r}; choose from "
                             f"{', '.join(NORMALIZATIONS)}")
    fmt, found = scan_shapes(root, seed, split_ratios)
    names = list(found)
    if categories:
        want = []
        for c in categories:
            c = category_name(c)
            if c not in found:
                syn = NAME_TO_SYNSET.get(c)
                hint = f" (synset {syn})" if syn else ""
                raise FlowsuiteError(f"no category {c!r}{hint} in {root}; it has "
                                     f"{', '.join(names)}")
            want.append(c)
        names = sorted(set(want))
    files, labels = [], []
    for k, c in enumerate(names):
        files += found[c][split]
        labels += [k] * len(found[c][split])
    if not files:
        raise FlowsuiteError(f"{root} has no {split} shapes for {', '.join(names)}; "
                             "check the folder's train/val/test sub-folders")
    clouds, skipped = _load(files, surface_points, seed, root, progress, f"reading {split}",
                            workers)
    if skipped:
        warnings.warn(_summary(skipped, len(files), root, split), ShapeFileWarning, stacklevel=2)
    keep = [i for i, c in enumerate(clouds) if c is not None]
    if not keep:
        raise FlowsuiteError(f"none of the {len(files)} {split} files in {root} could be read "
                             f"({_summary(skipped, len(files), root, split)})")
    if normalize == "global" and stats is None:
        if split == "train":
            stats = global_stats([clouds[i] for i in keep])
        else:
            key = (str(root.resolve()), tuple(names), surface_points, seed, split_ratios)
            if key not in _STATS_CACHE:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ShapeFileWarning)
                    train = open_shapes(root, "train", names, "global", None, surface_points,
                                        seed, split_ratios, workers=workers)
                _STATS_CACHE[key] = train.stats
            stats = _STATS_CACHE[key]
    return ShapeDataset([clouds[i] for i in keep], [labels[i] for i in keep],
                        [files[i] for i in keep], names, split, normalize, points_per_shape,
                        seed, stats, fmt, root, skipped)
