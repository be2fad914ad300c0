"""The parts every benchmark scenario shares: the fleet of agent processes, one signed
request, the report (percentiles, spread over repeats, tables, verdicts, JSON)."""
