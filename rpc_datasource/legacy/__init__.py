"""The legacy Server-Sent Events client, kept to compare the designs honestly."""
