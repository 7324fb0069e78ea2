"""One read-only dict per distinct label set, shared by every cached object that has it.

The pods of a controller carry the same labels: a cache of 30,000 pods holds a few hundred
label sets, not 30,000 dicts of ~0.3 KiB (issue 16). The table is weak: a set no object
holds any more leaves it, so a client that gives every object unique labels makes it no
bigger than the objects themselves. Callers must not change the dicts they get.
"""

from __future__ import annotations

import weakref
from typing import Mapping


class _Labels(dict[str, str]):
    """A shared label set (a dict that can be weakly referenced)."""

    __slots__ = ("__weakref__",)


# Every label set held, by its sorted items: equal sets are one dict.
_label_sets: weakref.WeakValueDictionary[tuple[tuple[str, str], ...], _Labels] = weakref.WeakValueDictionary()

# The labels of every object without any.
NO_LABELS: Mapping[str, str] = _Labels()


def shared_labels(labels: Mapping[str, str]) -> Mapping[str, str]:
    """The one read-only dict of this label set."""
    if not labels:
        return NO_LABELS
    items = tuple(sorted(labels.items()))
    shared = _label_sets.get(items)
    if shared is None:
        shared = _label_sets[items] = _Labels(items)
    return shared


def is_held(labels: Mapping[str, str]) -> bool:
    """Whether some object still holds this label set (the table has not forgotten it)."""
    return tuple(sorted(labels.items())) in _label_sets
