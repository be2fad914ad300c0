"""The legacy SSE route's event names, shared by the agent that sends and the client that reads."""

HEARTBEAT_EVENT = "heartbeat"
STOP_EVENT = "RpcServerStop"
