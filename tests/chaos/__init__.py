"""The chaos harness: a farm of real processes on one queue, real faults, and a checker (docs/reliability.md)."""
