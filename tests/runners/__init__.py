"""Tests of ``components/runners``: container engines and process mode."""
