"""Worker processes and the pool; builds on corral.supervisor."""
