"""The LLM side: activations, loaders of other libraries' SAEs, splicing, triggers."""
