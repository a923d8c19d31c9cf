"""The detection task (issue 13), first slice: COCO-format datasets (`data`) and COCO mAP through
a maintained evaluator (`evaluate`). The `Task` (a one-stage anchor-free student and its loss)
comes next; until then no catalog entry names this package."""
