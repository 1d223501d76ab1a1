"""The reliability suite (marker ``reliability``): the server under bad input, load and faults."""
