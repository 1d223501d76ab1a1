"""KFP components for train-to-serve on Vertex AI, each a thin module over the library packages
beside it; ARCHITECTURE.md shows how they fit."""
