"""The character-level language model application built on fastlstm (``fastlstm train``,
``fastlstm generate``): nn toolkit, model, data, options, checkpoints, progress, plots, trainer,
run loop and CLI, one module each. Import the modules you need; the library never imports this.
"""
