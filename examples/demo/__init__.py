"""The end-to-end demo: warehouse and master run as real processes through an outage."""
