"""The Washington RGB-D Object dataset as files: layout, download, synthetic stand-in, trials."""
