"""Runs as files a colleague can take: one checksummed archive per run (``bundle``), and two runs or archives put
side by side (``compare``)."""
