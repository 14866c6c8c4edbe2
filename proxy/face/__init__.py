"""The proxy's face for people: the waiting page a browser sees during a cold start, and the /ui dashboard."""
