"""Slice plans kept beside large stored updates, so that loading one applies it in slices
(see ``model.slices``) without decoding it again: the event loop then waits for one slice
of a 10^5-message snapshot at a time, not for all of it.

A plan goes in its update row's ``metadata`` column, which pycrdt-store fills with
whatever its caller gives and ignores when it reads the log back. A plan that is missing
or does not fit its update is no loss: the update is then applied whole.

A plan tells too whether its update is a snapshot of ours (``own``) or one a peer sent,
which was taken in slices: yrs may take in slices what it refuses whole, so such an
update is never merged with others as bytes (see ``compaction.build_snapshot``). Plans
stored before the two were told apart count as a peer's.
"""

from __future__ import annotations

import msgpack  # type: ignore[import-untyped]

from ..model.slices import Section, SlicePlan, describes

PLAN_TAG = b"gigi-slices-1:"  # the plan of an update a peer sent
OWN_PLAN_TAG = b"gigi-slices-own-1:"  # the plan of a snapshot of ours


def encode_plan(plan: SlicePlan, *, own: bool = False) -> bytes:
    """``plan`` as ``metadata`` of its update's row (``own``: a snapshot of ours)."""
    slices = [[list(section) for section in sections] for sections in plan.slices]
    body: bytes = msgpack.packb([plan.delete_set_at, slices])
    return (OWN_PLAN_TAG if own else PLAN_TAG) + body


def is_plan(metadata: bytes) -> bool:
    """Whether an update row's ``metadata`` holds a plan (``encode_plan``)."""
    return metadata.startswith(PLAN_TAG) or is_own_plan(metadata)


def is_own_plan(metadata: bytes) -> bool:
    """Whether an update row's ``metadata`` holds the plan of a snapshot of ours."""
    return metadata.startswith(OWN_PLAN_TAG)


def decode_plan(metadata: bytes, update: bytes) -> SlicePlan | None:
    """The plan ``encode_plan`` wrote for ``update``; ``None`` if it is damaged or does not
    fit the update's layout (``slices.describes``)."""
    try:
        tag = OWN_PLAN_TAG if is_own_plan(metadata) else PLAN_TAG
        delete_set_at, slices = msgpack.unpackb(metadata[len(tag) :])
        plan = SlicePlan(
            tuple(tuple(Section(*map(_count, section)) for section in sections) for sections in slices),
            _count(delete_set_at),
        )
    except Exception:  # msgpack raises many types, unpacking and Section more: all mean damaged
        return None
    return plan if describes(plan, update) else None


def _count(value: object) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"not a count: {value!r}")
    return value
