"""The pure rules of watching an agent: probe results, the up/down state machine, the probe
policy and its timing, watch-mode rules, reading a health answer, and the events. No I/O."""
