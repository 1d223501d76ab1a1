"""Tests of ``components/imaging``, the ``build_image`` component and the serving image."""
