"""What one server process shares across its agents: the server's instance_id, the live agents,
the worker's heartbeat, and the stop signals that begin their shutdown."""
