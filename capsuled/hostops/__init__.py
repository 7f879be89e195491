"""Host operations: what the API asks of the host that runs a container beyond desired
state (logs, exec, attach, archives, top, stats, imperative lifecycle, images).

    protocol.py   ContainerOps, RawStream, ExecResult, ImageInfo and the default limits
    wire.py       the API ↔ agent wire format (pure: no I/O)
    server.py     the agent's ops endpoint (imported by the composition root only)
    client.py     RemoteOps, the API's client of that endpoint, and its per-host pool
    terminal.py   a websocket ↔ RawStream bridge, for both hops of a terminal session
"""
