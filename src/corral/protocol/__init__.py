"""The launcher protocol: wire format and shared constants.  STDLIB ONLY.

Imported by both the launcher (which must stay stdlib-only and tiny) and the supervisor.
"""
