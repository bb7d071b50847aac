"""Admin DNS tooling: the zone lines a mail domain needs, and a checker of what is published."""
