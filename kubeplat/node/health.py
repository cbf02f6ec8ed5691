"""What a node tells the world about itself: its status, and that it failed.

The status goes to `s3://BUCKET/ENV/status/LAYER/INSTANCE/bootstrap.json` (the node role may
write there and nowhere else), so the operator sees every node's progress without logging in.

A node whose bootstrap fails for good marks itself unhealthy in its autoscaling group
(`SetInstanceHealth`), which replaces it. A broken configuration would make every replacement
fail the same way, so replacements are capped: each one leaves a marker object under
`status/LAYER/replaced/`, and once `cap` markers are younger than `window_s`, a failed node
stays in service, failed, for an operator to look at, and says so.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from . import aws
from .steps import now_iso, say

CAP = 3
WINDOW_S = 3600.0


class Reporter:
    """One node's voice: its bucket prefix and its identity."""

    def __init__(self, bucket: str, prefix: str, layer: str, identity: aws.Identity) -> None:
        self.bucket = bucket
        self.base = f"{prefix}/status/{layer}"
        self.identity = identity
        self._s3: Any = None

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = aws.client("s3", self.identity.region)
        return self._s3

    def publish(self, name: str, document: dict[str, Any]) -> bool:
        """Write `status/LAYER/INSTANCE/NAME.json`; best effort (False when it could not)."""
        key = f"{self.base}/{self.identity.instance_id}/{name}.json"
        try:
            body = json.dumps(document, indent=1, sort_keys=True).encode()
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)
            return True
        except Exception as exc:  # reporting must never break what it reports on
            say(f"could not publish {key}: {exc}")
            return False

    def read(self, instance_id: str, name: str) -> dict[str, Any] | None:
        """Another node's `NAME.json` report, or None when it has none (or it is unreadable)."""
        key = f"{self.base}/{instance_id}/{name}.json"
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            found = json.loads(body)
        except Exception:  # missing, unreadable or damaged: the same as no report
            return None
        return found if isinstance(found, dict) else None

    def recent_replacements(self, window_s: float = WINDOW_S) -> int:
        """How many nodes of this layer asked to be replaced within `window_s`."""
        since = datetime.now(timezone.utc) - timedelta(seconds=window_s)
        count = 0
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.base}/replaced/"):
            for item in page.get("Contents", []):
                if item["LastModified"] >= since:
                    count += 1
        return count

    def failed(self, reason: str, cap: int = CAP, window_s: float = WINDOW_S) -> str:
        """This node cannot finish: be replaced, unless the layer's cap is reached.

        Returns what was done, as one line (also printed).
        """
        try:
            recent = self.recent_replacements(window_s)
        except Exception as exc:
            # Without the count, do not risk a replacement loop: stay, and say so.
            message = f"left in service, failed ({reason}); could not count replacements: {exc}"
            say(message)
            return message
        if recent >= cap:
            message = (
                f"left in service, failed ({reason}): {recent} node(s) of this layer were "
                f"already replaced within {window_s / 60:.0f} minutes (cap {cap}); the "
                "configuration itself is likely broken - fix it and run kubeplat up"
            )
            say(message)
            return message
        iid = self.identity.instance_id
        marker = f"{self.base}/replaced/{now_iso()}-{iid}"
        try:
            self.s3.put_object(Bucket=self.bucket, Key=marker, Body=reason.encode())
            aws.client("autoscaling", self.identity.region).set_instance_health(
                InstanceId=iid, HealthStatus="Unhealthy", ShouldRespectGracePeriod=False
            )
        except Exception as exc:
            message = f"failed ({reason}); could not mark this instance unhealthy: {exc}"
            say(message)
            return message
        message = f"marked unhealthy ({reason}): the autoscaling group replaces this instance"
        say(message)
        return message
