"""Tests of ``components/stand_ins`` and the local stand-in components."""
