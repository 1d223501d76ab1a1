"""Tests of the model server, ``serving_image/server``."""
