"""Which of a class-conditional model's labels stands for each dataset class."""

from __future__ import annotations

import diffbench

from .layout import Layout


def label_ids(layout: Layout, class_names: list[str], classes: str) -> list[int]:
    """The model's label id of each dataset class: the ``classes`` param, names in id2label, or by position."""
    total = layout.model_classes or 0
    if classes:
        items = [s.strip() for s in classes.split("|" if "|" in classes else ",") if s.strip()]
        if len(items) != len(class_names):
            raise diffbench.ParamError(
                f"classes lists {len(items)} labels but the dataset has {len(class_names)} classes; give one per class"
            )
        ids = [int(item) if is_label_id(item) else by_name(layout, item) for item in items]
    else:
        names = name_index(layout)
        found = [names.get(n.strip().lower()) for n in class_names]
        if layout.id2label and all(i is not None for i in found):
            ids = [int(i) for i in found]  # type: ignore[arg-type]
        elif len(class_names) == total:
            ids = list(range(total))
        else:
            raise diffbench.ParamError(
                f"the model has {total} classes but the dataset has {len(class_names)}, and its names do not all "
                "match the model's id2label; map them with classes='ID|ID|...' (one model label per dataset class)"
            )
    bad = [i for i in ids if not 0 <= i < total]
    if bad:
        raise diffbench.ParamError(f"classes: label {bad[0]} is outside the model's {total} classes [0, {total})")
    return ids


def is_label_id(item: str) -> bool:
    """Whether a ``classes`` item is a label id (ASCII digits: int() takes "²" and refuses 5,000 digits)."""
    return item.isdigit() and item.isascii() and len(item) < 10


def name_index(layout: Layout) -> dict[str, int]:
    """Every comma-separated synonym of each id2label name (ImageNet style), lower-cased, to its id."""
    out: dict[str, int] = {}
    for i, label in layout.id2label.items():
        for synonym in label.split(","):
            out.setdefault(synonym.strip().lower(), i)
    return out


def by_name(layout: Layout, name: str) -> int:
    found = name_index(layout).get(name.lower())
    if found is None:
        hint = "the model has no id2label" if not layout.id2label else "no such name in the model's id2label"
        raise diffbench.ParamError(f"classes: '{name}' is not a label id and {hint}")
    return found
