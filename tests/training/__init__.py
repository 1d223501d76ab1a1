"""Tests of ``components/training`` and the ``train`` component."""
