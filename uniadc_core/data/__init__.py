"""Data: dataset layouts -> validated manifest and vocabulary (the ingest stage), and the contracts every later
stage reads: preprocessing, the vocabulary, the synthetic-shard reader."""
