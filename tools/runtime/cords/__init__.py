"""The round trip of one call, and where each hop lives.

   caller     POST https://<user>-<chute>.chutes.ai/<public path>, a JSON body, an API key
     |
   gateway    picks the cord by public path and method, reads `stream`, wraps the body as
     |        {"json": body, "params": query}, encrypts it, sends it to an instance
     |        (the Chutes API; here tools/platform/gateway.py `Gateway.invoke`)
   node       `chutes run` on a GPU node: GraValMiddleware checks and decrypts the call
     |        (the SDK; here tools/runtime/sdk/node.py)
   cord       handler.py `proxy_handler` (or `catch_all_handler`, gradio.py `gradio_handler`):
     |          sdk/call.py `incoming`          the caller's JSON, query and wire form (`Call`)
     |          request.py `build_outgoing`     that JSON as the request the service expects,
     |                                          decoded by the route's request kind (`KINDS`)
     |          answer.py `send`                the request on pool.py's pooled connection ...
   service    ... the wrapped HTTP service, on 127.0.0.1:<port>
     |          answer.py `send`                ... and its answer as the caller's (`sdk.call.Answer`):
     |                                          redirects on the service followed, content codings
     |                                          undone, errors by the platform's contract
     |          sdk/call.py `reply`             the answer on the wire: the node's envelope or stream
     |                                          lines, or plain HTTP (errors, dev mode)
   node       encrypts it (gzip + encrypt + base64)
     |
   gateway    decodes it (tools/platform/gateway.py `call_once` / `call_stream`) and answers the caller:
     |        JSON re-serialised, a body with its media type, or server-sent lines (no other header
     |        survives); 400 and 429 pass, any other status >= 400 fails the instance (7 in a row
     |        disable it)
   caller

catch_all.py routes a catch-all call to one of the manifest's templates before `build_outgoing`;
gradio.py replaces `build_outgoing` and `send` with Gradio's two-step call for a Gradio function.
`handler_for` (handler.py) gives each planned cord its handler.
"""
