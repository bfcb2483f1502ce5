"""The real teacher: Qwen2.5-VL grounding, then SAM2 soft masks prompted with its boxes (or,
for a point-only answer, its point)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.contract import NO_BOX, NO_POINT, PriorStatus, TeacherOutput

log = logging.getLogger(__name__)


class QwenSam2Teacher:
    """Qwen2.5-VL grounds every pair (batched across images, left-padded), then SAM2 encodes
    each image once and segments all of that image's grounded boxes in one prompt batch.

    ``runtime_info``: what the run used beyond the config (the processor's pixel budget),
    recorded with the priors it writes."""

    def __init__(self, grounder, segmenter):
        self.grounder, self.segmenter = grounder, segmenter

    @property
    def runtime_info(self) -> dict[str, Any]:
        return {"mllm_pixel_budget": getattr(self.grounder, "pixel_budget", None)}

    def predict(self, pairs: list[dict[str, Any]], image_root: Path) -> list[TeacherOutput]:
        from pipeline.datasets.manifest import load_rgb

        images = {}  # image_path -> RGB PIL image, None when unreadable
        for path in dict.fromkeys(p["image_path"] for p in pairs):
            try:
                images[path] = load_rgb(image_root / path)
            except OSError as err:
                log.warning("unreadable_image for every pair of %s: %s", path, err)
                images[path] = None
        readable = [i for i, p in enumerate(pairs) if images[p["image_path"]] is not None]
        groundings = dict(
            zip(
                readable,
                self.grounder.ground(
                    [images[pairs[i]["image_path"]] for i in readable],
                    [pairs[i]["expression"] for i in readable],
                ),
                strict=True,
            )
        )

        outputs: list[TeacherOutput | None] = [None] * len(pairs)
        for i in range(len(pairs)):
            if i not in groundings:
                outputs[i] = TeacherOutput(None, NO_BOX, NO_POINT, PriorStatus.UNREADABLE_IMAGE)
            elif groundings[i].status != PriorStatus.OK:
                g = groundings[i]
                outputs[i] = TeacherOutput(None, NO_BOX, NO_POINT, g.status, g.raw_text)
        for path, image in images.items():
            grounded = [
                i for i in readable if pairs[i]["image_path"] == path and outputs[i] is None
            ]
            if not grounded:
                continue
            self.segmenter.set_image(np.array(image))
            # A point-only grounding has no box: a NaN row, which SAM2Prior prompts with
            # the point alone.
            boxes = np.array(
                [groundings[i].box_original or (np.nan,) * 4 for i in grounded], np.float32
            )
            points = np.array(
                [groundings[i].point_original or (np.nan, np.nan) for i in grounded], np.float32
            )
            masks = self.segmenter.predict(boxes, points)
            for row, i in enumerate(grounded):
                g = groundings[i]
                finite = bool(masks.finite[row])
                outputs[i] = TeacherOutput(
                    masks.prob[row] if finite else None,
                    boxes[row],
                    points[row],
                    PriorStatus.OK if finite else PriorStatus.NON_FINITE,
                    g.raw_text,
                )
        return outputs
