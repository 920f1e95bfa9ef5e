"""The sync engine: connector pages in, canonical rows out."""
