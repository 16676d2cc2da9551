"""What runs inside a chute: the wrapper image copies this package whole (with tools/chute_wrappers.py,
the deploy modules' API), and nothing here imports anything of tools/ outside it.

  constants.py       facts shared by every part (ports, timeouts, /app, environment flags, the secrets rule)
  errors.py          every exception of chutes-wrappers, one rooted tree, and the CLI edge that prints them
  routes.py          a route and the route manifest (every form it was ever written in), the path rule
  gradio_spec.py     a Gradio function as the manifest records it
  registration.py    the pure plan: which cord every route gets, or why it is skipped
  cords/             what a call travels through inside the chute, in the order it travels
  sdk/               the one adapter to the chutes SDK (and the node runner, `chutes run` as on a GPU node)
  launcher.py        the wrapped service: started, waited for, stopped with the chute
  process_groups.py  the one stop rule for every process group
  ports.py           whether a port is free, or listened on
  image.py           the wrapper image's Dockerfile (a deploy module builds it when imported)
  image_setup.sh     the image's setup step (run at build time, not copied into /app)

What runs only on the developer's machine lives beside this package in tools/: discovery, the local
platform (tools/platform/), the deploy.sh actions (tools/commands/) and their libraries.
"""
