"""Training: configs (`config`), the generic run-folder runner (`runner`) and one module per model family."""
