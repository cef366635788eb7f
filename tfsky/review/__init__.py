"""The stream review web page: a local Flask app over the stream manifests (``tfsky streams review``)."""
