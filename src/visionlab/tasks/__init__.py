"""The runners of the built-in task kinds (:mod:`visionlab.kinds`): data, step and evaluation of one run."""
