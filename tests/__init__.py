"""The test suite. Its packages mirror the project's: ``server`` (serving_image/server),
``training``, ``imaging``, ``contract``, ``runners``, ``stand_ins`` (components/...),
``pipelines``; ``reliability`` puts the server under bad input, load and faults."""
