"""Prediction on images of any size: tiled segmenter, output files and resumable batch jobs.

`segment.TiledSegmenter` predicts one image; `batch.predict_many` runs a
folder / manifest job (``tfsky predict``); `outputs` defines the files written.
"""
