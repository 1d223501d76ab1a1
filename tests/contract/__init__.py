"""Tests of ``components/contract`` and the ``contract_check`` component."""
