"""The legacy SSE route's event names, shared by the agent that sends and the client that reads."""

HEARTBEAT_EVENT = "heartbeat"
STOP_EVENT = "RpcServerStop"
SUPERSEDED_EVENT = "superseded"
# Sent with `superseded` as the event's `retry`: how long the ended stream's client waits
# before it connects again, so that two masters on one agent don't take turns forever.
SUPERSEDED_RETRY_MS = 30_000
