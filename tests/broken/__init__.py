"""Deliberately broken implementations: the conformance suite must reject each one."""
