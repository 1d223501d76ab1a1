"""Tests of ``pipelines/``: the compiled pipeline, submit and schedule, run-local."""
