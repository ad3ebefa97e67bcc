"""segmentation server."""
