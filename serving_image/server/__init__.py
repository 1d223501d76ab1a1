"""The model server that honours Vertex AI's custom-container contract."""
