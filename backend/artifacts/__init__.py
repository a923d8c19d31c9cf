"""Run outputs (student weights, exports, configs) and the upload/download plumbing of the store."""
