"""Small pipelines that reuse single train-to-serve components in other DAGs."""
