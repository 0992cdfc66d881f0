"""File names of the Washington RGB-D Object dataset, and an index of the frames on disk.

A frame's files are `<category>_<n>_<video>_<frame>_<kind>.png` (kind `crop`, `depthcrop`,
`maskcrop`) and `..._loc.txt`, inside `<category>/<category>_<n>/`. Category names contain
underscores (`cell_phone`, `food_can`), so names are parsed from the right.

Only files at exactly that place count: a name that parses but sits in another folder, and
anything hidden (`.extracting/` left by a killed download, macOS `._*` and `__MACOSX/`) is
never a frame. A raw folder is used only once the download stage has written its completion
marker `.download.json` into it (last, after everything else is in place).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import UserError

KINDS = {"crop": "rgb", "depthcrop": "depth", "maskcrop": "mask", "loc": "loc"}
VIDEOS = (1, 2, 4)  # the dataset has no video 3
_NAME = re.compile(r"^(?P<category>.+?)_(?P<instance>\d+)_(?P<video>\d+)_(?P<index>\d+)"
                   r"_(?P<kind>crop|depthcrop|maskcrop|loc)\.(?P<ext>png|txt)$")
ARCHIVE_ROOT = "rgbd-dataset_eval"
MARKER = ".download.json"  # written by the download stage when `raw` is complete
_SKIPPED_FOLDERS = {"__MACOSX"}  # macOS resource forks inside zip archives


@dataclass(frozen=True)
class FrameName:
    """One parsed file name; `frame` is the id used everywhere (`cell_phone_1_2_41`)."""

    category: str
    instance_number: int
    video: int
    index: int
    kind: str

    @property
    def instance(self) -> str:
        return f"{self.category}_{self.instance_number}"

    @property
    def frame(self) -> str:
        return f"{self.instance}_{self.video}_{self.index}"


def parse_name(name: str) -> FrameName | None:
    """Parse a file name from the right; None for files that are not part of a frame."""
    m = _NAME.match(name)
    if m is None or (m["kind"] == "loc") != (m["ext"] == "txt"):
        return None
    return FrameName(category=m["category"], instance_number=int(m["instance"]),
                     video=int(m["video"]), index=int(m["index"]), kind=m["kind"])


def is_hidden(part: str) -> bool:
    """A path component that is never part of the dataset (dot-entries, `__MACOSX`)."""
    return part.startswith(".") or part in _SKIPPED_FOLDERS


def frame_file(parts: tuple[str, ...]) -> FrameName | None:
    """The frame a file belongs to, given its path relative to the dataset root.

    Only `<category>/<category>_<n>/<category>_<n>_<video>_<frame>_<kind>` counts.
    """
    if len(parts) != 3 or any(is_hidden(p) for p in parts):
        return None
    parsed = parse_name(parts[2])
    if parsed is None or parts[0] != parsed.category or parts[1] != parsed.instance:
        return None
    return parsed


def split_instance(instance: str) -> tuple[str, int]:
    """`cell_phone_1` -> (`cell_phone`, 1); a `UserError` if it has no trailing number."""
    category, sep, number = instance.rpartition("_")
    if not sep or not category or not number.isdigit():
        raise UserError(f"instance name {instance!r}: expected <category>_<number>, "
                        "e.g. cell_phone_1")
    return category, int(number)


@dataclass
class Frame:
    """The files of one frame; `rgb` or `depth` may be missing (the frame is then skipped)."""

    name: FrameName
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int, int, int]:
        n = self.name
        return (n.category, n.instance_number, n.video, n.index)


@dataclass(frozen=True)
class FrameIndex:
    frames: list[Frame]
    categories: list[str]
    ignored: list[Path]  # files under the root that are not part of any frame


def find_root(raw: str | Path) -> Path:
    """The extracted dataset folder: `raw/rgbd-dataset_eval` if present, else `raw`."""
    raw = Path(raw)
    if not raw.is_dir():
        raise UserError(f"{raw}: dataset folder not found (run the download stage first)")
    inner = raw / ARCHIVE_ROOT
    return inner if inner.is_dir() else raw


def require_download(raw: str | Path) -> dict[str, object]:
    """The completion record of `raw`; a `UserError` if the download stage did not finish."""
    raw = Path(raw)
    marker = raw / MARKER
    find_root(raw)
    try:
        record = json.loads(marker.read_text())
    except FileNotFoundError:
        record = None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{marker}: unreadable completion marker ({err}); run the download "
                        "stage again") from err
    folders = record.get("folders") if isinstance(record, dict) else None
    if not isinstance(folders, list) or not all((raw / str(f)).exists() for f in folders):
        raise UserError(f"{raw}: not a complete download (no valid {MARKER}; an interrupted or "
                        f"hand-made folder); run `python -m pipeline download --out {raw}`, "
                        "which also takes a local archive with --url")
    return record


def index_frames(raw: str | Path) -> FrameIndex:
    """Every frame under `raw`, sorted by category, instance, video and frame number."""
    root = find_root(raw)
    frames: dict[tuple[str, int, int, int], Frame] = {}
    ignored: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not is_hidden(d))  # never walk into them
        for name in sorted(names):
            path = Path(folder) / name
            parsed = frame_file(path.relative_to(root).parts)
            if parsed is None:
                if not is_hidden(name) and not name.endswith(".txt"):
                    ignored.append(path)
                continue
            key = (parsed.category, parsed.instance_number, parsed.video, parsed.index)
            frame = frames.setdefault(key, Frame(name=FrameName(*key, kind="")))
            frame.files[KINDS[parsed.kind]] = path
    if not frames:
        raise UserError(f"{root}: no Washington RGB-D frames found "
                        "(expected files like apple/apple_1/apple_1_1_1_crop.png)")
    ordered = [frames[k] for k in sorted(frames)]
    categories = sorted({f.name.category for f in ordered})
    return FrameIndex(frames=ordered, categories=categories, ignored=ignored)
