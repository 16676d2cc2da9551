"""The one adapter to the chutes SDK (chutes 0.6.9): nothing outside this package touches the SDK's
private attributes or runtime wiring, or imports from `chutes` more than `Chute`, `NodeSelector` and
`Image` (tests/unit/test_layout.py holds it). When the SDK changes, this package changes.

  rules.py   the SDK's own rules that others apply without importing it (cord paths, its version)
  chute.py   our cords on a `Chute`: added with our handler, what we keep per chute, what deploy.sh and
             the local gateway read about its cords, the shutdown hook, a ChutePack unwrapped
  call.py    both directions of a call at the SDK's edge: `incoming` (what a cord receives) and
             `reply` (its answer on the wire: the node's envelope and stream lines, or plain HTTP)
  image.py   the image's Dockerfile directives the SDK has no public API for
  node.py    a chute run as `chutes run` runs it on a GPU node, with the validator's crypto stood in

Nothing here imports `chutes` at module import (it costs ~0.7 s): the CLIs import this for free.
"""
