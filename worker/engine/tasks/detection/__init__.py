"""The detection task (issue 13), first slice: COCO-format datasets (`data`) and COCO mAP through
a maintained evaluator (`evaluate`), and a CenterNet-style student with its targets, loss and
decoding (`centernet`). The `Task` that plugs them into the trainer comes next; until then no
catalog entry names this package."""
