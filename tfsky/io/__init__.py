"""Reading and writing images and masks (LDR, HDR .exr/.hdr/.tif), always atomically."""
