"""Benchmark presets (class lists and task splits) and class-order helpers.

* ``vggsound-instruments``: 36 instrument classes in 4 tasks of 9, grouped as the paper's split files do.
* ``vggsound100``: 100 VGGSound classes in the order the audio-visual class-incremental literature uses,
  as 10 tasks of 10 (default) or 4 tasks of 25.
* ``vgg-ss``: VGG-Sound Sources' 220 classes; the class list comes with the dataset, so the user passes
  its file (one class per line); 4 tasks by default, any count with ``num_tasks``.

The published lists name a few classes differently from VGGSound's own index (``bass_guitar`` for
``playing bass guitar``, ``subway, metr`` for ``subway, metro, underground``); ``label_style="vggsound"``
(default) gives the names found in VGGSound's ``vggsound.csv``, ``label_style="published"`` the lists as
published.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from cign_fast.data.labels import LabelRow

VGGSOUND_INSTRUMENTS_TASKS: tuple[tuple[str, ...], ...] = (
    ("accordion", "bass_guitar", "cello", "cornet", "electronic_organ", "erhu", "flute", "tabla", "timbales"),
    ("acoustic_guitar", "banjo", "glockenspiel", "piano", "steel_guitar", "trumpet", "vibraphone", "violin", "zither"),
    ("bass_drum", "bongo", "cymbal", "guiro", "hammond_organ", "harp", "harpsichord", "mandolin", "xylophone"),
    ("clarinet", "congas", "double_bass", "drum_kit", "electric_guitar", "saxophone", "sitar", "snare_drum", "ukulele"),
)

VGGSOUND100_CLASSES: tuple[str, ...] = (
    "playing theremin",
    "donkey, ass braying",
    "playing electronic organ",
    "zebra braying",
    "people eating noodle",
    "airplane flyby",
    "playing double bass",
    "cat growling",
    "footsteps on snow",
    "playing tennis",
    "black capped chickadee calling",
    "bouncing on trampoline",
    "playing steelpan",
    "waterfall burbling",
    "subway, metr",
    "people clapping",
    "chipmunk chirping",
    "chopping food",
    "people shuffling",
    "elk bugling",
    "alarm clock ringing",
    "people booing",
    "canary calling",
    "chopping wood",
    "people humming",
    "lathe spinning",
    "playing tuning fork",
    "playing violin, fiddle",
    "singing choir",
    "playing timbales",
    "children shouting",
    "chicken crowing",
    "car passing by",
    "driving motorcycle",
    "bull bellowing",
    "lawn mowing",
    "playing bugle",
    "mouse squeaking",
    "child singing",
    "playing tympani",
    "hair dryer drying",
    "basketball bounce",
    "driving snowmobile",
    "train whistling",
    "thunder",
    "dog bow-wow",
    "ocean burbling",
    "cuckoo bird calling",
    "sheep bleating",
    "splashing water",
    "air conditioning noise",
    "cattle mooing",
    "eagle screaming",
    "air horn",
    "playing bass guitar",
    "sloshing water",
    "tap dancing",
    "running electric fan",
    "playing ukulele",
    "playing guiro",
    "playing shofar",
    "people sniggering",
    "people whispering",
    "people finger snapping",
    "car engine idling",
    "bathroom ventilation fan running",
    "police car (siren)",
    "roller coaster running",
    "playing french horn",
    "swimming",
    "lighting firecrackers",
    "playing electric guitar",
    "playing castanets",
    "people babbling",
    "arc welding",
    "wood thrush calling",
    "wind rustling leaves",
    "playing darts",
    "planing timber",
    "crow cawing",
    "shot football",
    "writing on blackboard with chalk",
    "people slapping",
    "using sewing machines",
    "raining",
    "dog howling",
    "playing cello",
    "playing trumpet",
    "fox barking",
    "bowling impact",
    "people crowd",
    "pumping water",
    "ice cracking",
    "baby crying",
    "playing bass drum",
    "playing bongo",
    "tornado roaring",
    "playing steel guitar, slide guitar",
    "playing squash",
    "typing on typewriter",
)

# Published names whose VGGSound label is not "playing " + the name with spaces (instruments) or itself.
_VGGSOUND_LABEL_EXCEPTIONS = {
    "steel_guitar": "playing steel guitar, slide guitar",
    "violin": "playing violin, fiddle",
    "xylophone": "playing marimba, xylophone",
    "subway, metr": "subway, metro, underground",
}

_INSTRUMENTS = frozenset(name for task in VGGSOUND_INSTRUMENTS_TASKS for name in task)

BENCHMARK_NAMES = ("vggsound-instruments", "vggsound100", "vgg-ss")
LABEL_STYLES = ("vggsound", "published")
# Allowed task counts per preset; the first is the default.
_TASK_COUNTS = {"vggsound-instruments": (4,), "vggsound100": (10, 4), "vgg-ss": (4,)}
VGG_SS_NUM_CLASSES = 220


def vggsound_label(published_name: str) -> str:
    """VGGSound's label for a class name of the published lists (``'bass_guitar' -> 'playing bass guitar'``)."""
    if published_name in _VGGSOUND_LABEL_EXCEPTIONS:
        return _VGGSOUND_LABEL_EXCEPTIONS[published_name]
    if published_name in _INSTRUMENTS:
        return "playing " + published_name.replace("_", " ")
    return published_name


def split_classes(class_names: Sequence[str], num_tasks: int) -> list[list[str]]:
    """Consecutive chunks of ``class_names`` in order; the first ``len % num_tasks`` tasks get one class more."""
    names = list(class_names)
    if len(set(names)) != len(names):
        raise ValueError("class_names: expected distinct class names, got duplicates")
    if not isinstance(num_tasks, int) or isinstance(num_tasks, bool) or not 1 <= num_tasks <= len(names):
        raise ValueError(f"num_tasks: expected an int between 1 and the {len(names)} classes, got {num_tasks!r}")
    base, extra = divmod(len(names), num_tasks)
    tasks, start = [], 0
    for task in range(num_tasks):
        size = base + (1 if task < extra else 0)
        tasks.append(names[start : start + size])
        start += size
    return tasks


def class_order_from_file(path: str | Path) -> list[str]:
    """Class names, one per line (surrounding spaces, blank lines and ``#`` comment lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class list: no such file {path}")
    names: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if name in names:
            raise ValueError(f"class list {path}:{number}: class {name!r} is listed twice")
        names.append(name)
    if not names:
        raise ValueError(f"class list {path}: lists no class")
    return names


def shuffled_class_order(class_names: Sequence[str], seed: int) -> list[str]:
    """``class_names`` shuffled by ``random.Random(seed)`` (the same order for the same seed everywhere)."""
    names = list(class_names)
    random.Random(seed).shuffle(names)
    return names


def class_order_of_first_appearance(rows: Sequence[LabelRow], split: str | None = None) -> list[str]:
    """Distinct labels in the order they first appear in the labels file (optionally within one split)."""
    return list(dict.fromkeys(row.label for row in rows if split is None or row.split == split))


def benchmark_tasks(
    name: str, *, num_tasks: int | None = None, class_list: str | Path | None = None, label_style: str = "vggsound"
) -> list[list[str]]:
    """The class names of each task of a preset (see the module docstring).

    ``num_tasks``: vggsound100 takes 10 (default) or 4; vggsound-instruments only 4; vgg-ss any count
    (default 4). ``class_list``: the VGG-SS class list file (required for vgg-ss, refused otherwise).
    """
    if name not in BENCHMARK_NAMES:
        raise ValueError(f"benchmark: expected one of {', '.join(BENCHMARK_NAMES)}, got {name!r}")
    if label_style not in LABEL_STYLES:
        raise ValueError(f"label_style: expected one of {', '.join(LABEL_STYLES)}, got {label_style!r}")
    allowed = _TASK_COUNTS[name]
    count = allowed[0] if num_tasks is None else num_tasks
    if name != "vgg-ss" and count not in allowed:
        raise ValueError(
            f"num_tasks: benchmark {name!r} is run as {' or '.join(map(str, allowed))} tasks, got {num_tasks!r}"
        )
    if name == "vgg-ss":
        if class_list is None:
            raise ValueError("class_list: benchmark 'vgg-ss' needs the dataset's 220-class list file")
        classes = class_order_from_file(class_list)
        if len(classes) != VGG_SS_NUM_CLASSES:
            raise ValueError(
                f"class_list: expected {VGG_SS_NUM_CLASSES} VGG-SS classes in {class_list}, got {len(classes)}"
            )
        return split_classes(classes, count)
    if class_list is not None:
        raise ValueError(f"class_list: only used by benchmark 'vgg-ss', not {name!r}")
    published = (
        [list(task) for task in VGGSOUND_INSTRUMENTS_TASKS]
        if name == "vggsound-instruments"
        else split_classes(VGGSOUND100_CLASSES, count)
    )
    if label_style == "published":
        return published
    return [[vggsound_label(class_name) for class_name in task] for task in published]
