"""The datasets: files, splits and tracks (binary, 8bit)."""
