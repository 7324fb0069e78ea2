"""API timestamps: Kubernetes' metav1.Time has second precision."""

from __future__ import annotations

import time

from google.protobuf.timestamp_pb2 import Timestamp


def timestamp_at(epoch: float) -> Timestamp:
    return Timestamp(seconds=int(epoch))


def now_timestamp() -> Timestamp:
    return timestamp_at(time.time())
