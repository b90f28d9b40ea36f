"""The main job on a real model: all-MiniLM-L6-v2 compressed every way, measured and reported (``make demo``)."""
