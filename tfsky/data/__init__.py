"""From labelled images to a prepared cache to a `tf.data` pipeline of patches."""
